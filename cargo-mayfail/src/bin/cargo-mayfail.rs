//! `cargo mayfail ...`: cargo runs this binary with `mayfail` as its first
//! argument. See the `cargo_mayfail` library for the program.

fn main() {
    let args = std::env::args_os().collect();
    std::process::exit(cargo_mayfail::main_with_args(
        cargo_mayfail::Invocation::CargoSubcommand,
        args,
    ));
}
