/* The preload library's stress test: threads growing blocks by realloc,
   checking their contents, and a fork, under injected failures. Run by
   tests/preload.rs and, under valgrind, by ci/memcheck.sh. With the
   argument --no-fork it does not fork: memcheck's leak check of a forked
   child counts the blocks of the parent's other threads as lost. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int failures;

/* Grows a block by realloc, checking that its contents survive every
   successful realloc and that a failed one leaves the block untouched. */
static void *grow(void *arg) {
    unsigned seed = (unsigned)(size_t)arg;
    for (int round = 0; round < 200; round++) {
        size_t size = 16;
        unsigned char *block = malloc(size);
        if (block == NULL) { if (errno != ENOMEM) abort(); __sync_fetch_and_add(&failures, 1); continue; }
        memset(block, seed & 0xff, size);
        for (int step = 0; step < 12; step++) {
            size_t bigger = size * 2;
            unsigned char *moved = realloc(block, bigger);
            if (moved == NULL) {
                if (errno != ENOMEM) abort();
                __sync_fetch_and_add(&failures, 1);
                for (size_t i = 0; i < size; i++) if (block[i] != (seed & 0xff)) abort();
                continue;
            }
            for (size_t i = 0; i < size; i++) if (moved[i] != (seed & 0xff)) abort();
            memset(moved + size, seed & 0xff, bigger - size);
            block = moved;
            size = bigger;
        }
        free(block);
    }
    return NULL;
}

int main(int argc, char **argv) {
    int forking = !(argc > 1 && strcmp(argv[1], "--no-fork") == 0);
    pthread_t threads[4];
    int started[4];
    for (int i = 0; i < 4; i++) {
        /* pthread_create allocates too: an injected failure is EAGAIN. */
        int rc;
        while ((rc = pthread_create(&threads[i], NULL, grow, (void *)(size_t)(i + 1))) == EAGAIN)
            __sync_fetch_and_add(&failures, 1);
        started[i] = rc == 0;
        if (rc != 0 && rc != EAGAIN) return 2;
    }
    if (forking) {
        pid_t child = fork();
        if (child == 0) {
            /* The child allocates through the library too, then exits. */
            grow((void *)(size_t)9);
            _exit(0);
        }
        int status = 0;
        if (child < 0 || waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
            return 3;
    }
    for (int i = 0; i < 4; i++) if (started[i]) pthread_join(threads[i], NULL);
    printf("failures seen: %d\n", failures);
    return 0;
}
