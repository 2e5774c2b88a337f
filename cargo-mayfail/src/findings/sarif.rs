//! The SARIF 2.1.0 file of a report (`--sarif FILE`), for code scanning:
//! one result per site, its rule the site's class, its level `error` for a
//! bug class, `warning` for failed, `note` for infallible and `none` for
//! handled; its location the frame the site is blamed on (`--scope`),
//! relative to the current directory (the workspace root, as `%SRCROOT%`)
//! when the file lies under it. Built with `serde-sarif`'s types, which are
//! generated from the SARIF schema.

use std::collections::BTreeMap;

use serde_sarif::sarif;

use super::Class;
use crate::model::{Frame, Site, Summary};
use crate::state::StackId;

/// The base every relative location is resolved against.
const SRCROOT: &str = "%SRCROOT%";

/// What each class means, for the rule's description.
fn describe(class: Class) -> &'static str {
    match class {
        Class::Crashed => {
            "The process died of SIGSEGV or SIGBUS when this allocation failed: most likely a null pointer used unchecked."
        }
        Class::FallibleApiAborted => {
            "The process aborted when this allocation failed although a fallible function (try_*) of the code lay between the test and the allocation: the API promises to report the failure."
        }
        Class::ErrorPathAborted => {
            "The process aborted while a fallible function built its error after a handled failure."
        }
        Class::Hung => "The process hung when this allocation failed (killed by --timeout).",
        Class::Leaked => "The process handled the failure but leaked memory.",
        Class::Unknown => "The process that failed this allocation left no fate: not looked at.",
        Class::Infallible => {
            "The process aborted at an allocation std makes infallibly (Vec::push, to_string): the language's design."
        }
        Class::Failed => "A test failed when this allocation failed.",
        Class::Handled => "The failure was handled.",
    }
}

fn level(class: Class) -> sarif::ResultLevel {
    match class {
        c if c.is_bug() => sarif::ResultLevel::Error,
        Class::Failed => sarif::ResultLevel::Warning,
        Class::Infallible => sarif::ResultLevel::Note,
        _ => sarif::ResultLevel::None,
    }
}

/// A frame's location: a path relative to `root` (with `%SRCROOT%`) when
/// it lies under it, else an absolute `file://` URI; and its line.
fn location(frame: &Frame, root: &str) -> Option<sarif::Location> {
    let text = frame.location.as_deref()?;
    let (path, line) = match text.rsplit_once(':') {
        Some((path, line)) if line.parse::<i64>().is_ok() => (path, line.parse::<i64>().ok()),
        _ => (text, None),
    };
    let relative = path
        .strip_prefix(root)
        .and_then(|rest| rest.strip_prefix('/'));
    let artifact = match relative {
        Some(rest) => sarif::ArtifactLocation::builder()
            .uri(rest)
            .uri_base_id(SRCROOT)
            .build(),
        None if path.starts_with('/') => sarif::ArtifactLocation::builder()
            .uri(format!("file://{path}"))
            .build(),
        None => sarif::ArtifactLocation::builder().uri(path).build(),
    };
    let physical = sarif::PhysicalLocation::builder().artifact_location(artifact);
    let physical = match line.filter(|&l| l > 0) {
        Some(line) => physical
            .region(sarif::Region::builder().start_line(line).build())
            .build(),
        None => physical.build(),
    };
    Some(
        sarif::Location::builder()
            .physical_location(physical)
            .message(
                sarif::Message::builder()
                    .text(frame.function.clone())
                    .build(),
            )
            .build(),
    )
}

fn result(summary: &Summary, site: &Site, root: &str) -> sarif::Result {
    let class = site.class();
    let shown = site.shown(summary.view.scope);
    let top = shown
        .first()
        .map_or("an unnamed function", |f| f.function.as_str());
    let top = if site.panic {
        format!("the panic message of {top}")
    } else {
        top.to_owned()
    };
    let mut text = format!(
        "{}: {} failed in {top} ({}; {}).",
        class.name(),
        site.what,
        site.detail,
        site.binary
    );
    if let Some(fallible) = site.broken_promise() {
        text.push_str(&format!(" Fallible API: {}.", fallible.function));
    }
    text.push_str(&format!(" Replay: {}", site.replay));
    let locations: Vec<sarif::Location> = shown.iter().filter_map(|f| location(f, root)).collect();
    let mut fingerprints = BTreeMap::new();
    fingerprints.insert("mayfailStack/v1".to_owned(), StackId(site.id).to_string());
    let mut properties = BTreeMap::new();
    properties.insert("outcome".to_owned(), site.outcome.name().into());
    properties.insert(
        "baselined".to_owned(),
        (class.is_bug() && !summary.gates(site)).into(),
    );
    let builder = sarif::Result::builder()
        .rule_id(class.name())
        .level(level(class))
        .message(sarif::Message::builder().text(text).build())
        .partial_fingerprints(fingerprints)
        .properties(
            sarif::PropertyBag::builder()
                .additional_properties(properties)
                .build(),
        );
    // The first location is the blamed frame; the rest are its callers.
    let mut locations = locations.into_iter();
    match locations.next() {
        Some(first) => builder
            .locations(vec![first])
            .related_locations(locations.collect::<Vec<_>>())
            .build(),
        None => builder.build(),
    }
}

/// The SARIF file of `summary`, pretty-printed, with a final newline.
pub(crate) fn render(summary: &Summary) -> String {
    let root = std::env::current_dir()
        .ok()
        .and_then(|d| d.to_str().map(str::to_owned))
        .unwrap_or_default();
    let rules: Vec<sarif::ReportingDescriptor> = Class::ALL
        .iter()
        .map(|&class| {
            sarif::ReportingDescriptor::builder()
                .id(class.name())
                .short_description(
                    sarif::MultiformatMessageString::builder()
                        .text(describe(class))
                        .build(),
                )
                .build()
        })
        .collect();
    let driver = sarif::ToolComponent::builder()
        .name("mayfail")
        .version(env!("CARGO_PKG_VERSION"))
        .information_uri("https://github.com/mayfail-rs/mayfail")
        .rules(rules)
        .build();
    let results: Vec<sarif::Result> = summary
        .sites
        .iter()
        .map(|site| result(summary, site, &root))
        .collect();
    let mut bases = BTreeMap::new();
    bases.insert(
        SRCROOT.to_owned(),
        sarif::ArtifactLocation::builder()
            .uri(format!("file://{root}/"))
            .build(),
    );
    let run = sarif::Run::builder()
        .tool(driver)
        .results(results)
        .original_uri_base_ids(bases)
        .build();
    let log = sarif::Sarif::builder()
        .version(sarif::Version::V2_1_0.to_string())
        .schema(sarif::SCHEMA_URL)
        .runs(vec![run])
        .build();
    let mut text = serde_json::to_string_pretty(&log).expect("a SARIF log always serializes");
    text.push('\n');
    text
}
