/* A C agent that follows a running hub's speech register (and reads one of its value
 * registers) through the installed header only: it blocks in vr_control_wait until the
 * version moves, reads, and prints one line per version it saw. Built and run by
 * tests/control_hub.rs against a live `voxring serve`.
 *
 *   hub_speech HUB N     prints "ready VERSION", then "speech VERSION ACTIVE SINCE SEGMENTS"
 *                        for each version it wakes up to, until SEGMENTS reaches N; then
 *                        "value5 W0 W1 W2 W3" and exits 0. Any failure: a message on stderr,
 *                        exit 1. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "voxring.h"

static int fail(const char *what, int32_t code) {
    char msg[512];
    vr_last_error(msg, sizeof msg);
    fprintf(stderr, "hub_speech: %s: %s (%s)\n", what, vr_strerror(code), msg);
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: hub_speech HUB N\n");
        return 2;
    }
    uint64_t want = strtoull(argv[2], NULL, 10);
    vr_control *speech = NULL, *value = NULL;
    int32_t rc = vr_control_attach_hub(argv[1], "speech", &speech);
    if (rc != VR_OK) return fail("attach speech", rc);
    rc = vr_control_attach_hub(argv[1], "value5", &value);
    if (rc != VR_OK) return fail("attach value5", rc);
    size_t size = 0;
    rc = vr_control_size(speech, &size);
    if (rc != VR_OK || size != 4 * sizeof(uint64_t)) return fail("size", rc);
    uint64_t s[4], seen = 0;
    rc = vr_control_read(speech, s, sizeof s, &seen);
    if (rc != VR_OK) return fail("read speech", rc);
    printf("ready %" PRIu64 "\n", seen);
    fflush(stdout);
    for (;;) {
        /* 60 s: a "give up" bound only; a lost wake-up fails the test. */
        rc = vr_control_wait(speech, seen, 60000000000LL, &seen);
        if (rc != VR_OK) return fail("wait speech", rc);
        rc = vr_control_read(speech, s, sizeof s, &seen);
        if (rc != VR_OK) return fail("read speech", rc);
        printf("speech %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", seen, s[0], s[1],
               s[2]);
        fflush(stdout);
        if (s[2] >= want) break;
    }
    uint64_t v[4];
    rc = vr_control_read(value, v, sizeof v, NULL);
    if (rc != VR_OK) return fail("read value5", rc);
    printf("value5 %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", v[0], v[1], v[2], v[3]);
    vr_control_destroy(value);
    vr_control_destroy(speech);
    return 0;
}
