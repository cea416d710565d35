/* A C agent of a running hub (`voxring serve --name HUB`), through the installed C library
 * only (build: cc hub_agent.c $(pkg-config --cflags --libs voxring)). Used by the test
 * `outside_c_and_python_agents_read_bit_exact_and_speak_into_the_mix` (harness/tests/hub.rs)
 * and the example of docs/hub.md.
 *
 *   hub_agent HUB NAME FRAMES LEVEL
 *
 * - joins the hub's mic ring HUB.mic as a reader (shared memory only: no socket fallback);
 * - makes its output ring HUB.out.NAME in the mic's format (32 frames, one consumer: the hub,
 *   lossless) and prints "ready";
 * - for every mic frame: the CRC-32 of its payload, then one frame of LEVEL (every sample) into
 *   the output ring; it never waits for room there (a full ring drops the frame, counted);
 * - after FRAMES frames prints one JSON line: {"first_seq", "frames", "lost", "crc" (CRC-32 of
 *   the payloads of frames first_seq .. first_seq + frames, in order, hex), "spoken",
 *   "dropped"};
 * - goes on reading and speaking until its standard input is closed (or the hub's stream
 *   ends), then removes its output ring and leaves.
 * Errors go to stderr (what failed and the library's reason) with exit status 1. */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "voxring.h"

static int fail(const char *what, int32_t code) {
    char msg[1024];
    vr_last_error(msg, sizeof msg);
    fprintf(stderr, "hub_agent: %s: %s\n  %s\n", what, vr_strerror(code), msg);
    return 1;
}

/* True once standard input is at its end (the caller closed it). Never blocks. */
static int stdin_closed(void) {
    struct pollfd p = {.fd = STDIN_FILENO, .events = POLLIN};
    if (poll(&p, 1, 0) <= 0) return 0;
    char buf[64];
    return read(STDIN_FILENO, buf, sizeof buf) <= 0;
}

/* One frame of `level` into the output ring; 1 if written, 0 if the ring was full. */
static int speak(vr_writer *w, const vr_config *c, int32_t level, int32_t *rc) {
    vr_frame f;
    size_t n = 0;
    *rc = vr_write_grant(w, 1, &f, &n);
    if (*rc == VR_E_FULL) {
        *rc = VR_OK;
        return 0;
    }
    if (*rc != VR_OK) return 0;
    size_t samples = (size_t)c->samples_per_frame * c->channels;
    for (size_t i = 0; i < samples; i++) {
        if (c->format == VR_FORMAT_S16) ((int16_t *)f.data)[i] = (int16_t)level;
        else if (c->format == VR_FORMAT_S32) ((int32_t *)f.data)[i] = level;
        else ((float *)f.data)[i] = (float)level / 32768.0f;
    }
    f.len = f.capacity;
    *rc = vr_write_commit(w, &f, 1);
    return *rc == VR_OK;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: hub_agent HUB NAME FRAMES LEVEL\n");
        return 2;
    }
    const char *hub = argv[1], *name = argv[2];
    unsigned long long want = strtoull(argv[3], NULL, 10);
    int32_t level = (int32_t)strtol(argv[4], NULL, 10);
    char mic[256], out[256];
    snprintf(mic, sizeof mic, "%s.mic", hub);
    snprintf(out, sizeof out, "%s.out.%s", hub, name);

    vr_reader *r = NULL;
    int32_t rc = vr_reader_open(mic, NULL, VR_OPEN_NO_FALLBACK, &r);
    if (rc != VR_OK) return fail("joining the hub's mic (vr_reader_open)", rc);
    vr_info info;
    rc = vr_reader_info(r, &info);
    if (rc != VR_OK) return fail("vr_reader_info", rc);
    vr_config oc = info.config;
    oc.frames = 32;
    oc.max_consumers = 1;
    oc.policy = VR_POLICY_LOSSLESS;
    vr_writer *w = NULL;
    rc = vr_writer_create(out, &oc, &w);
    if (rc != VR_OK) return fail("making the output ring (vr_writer_create)", rc);
    printf("ready\n");
    fflush(stdout);

    uint64_t first = 0, next = 0, frames = 0, lost = 0, spoken = 0, dropped = 0;
    uint32_t crc = 0;
    int reported = 0, status = 0;
    while (!stdin_closed()) {
        rc = vr_reader_wait(r, 100000000LL);
        if (rc == VR_E_END_OF_STREAM) break;
        if (rc == VR_E_TIMEOUT) continue;
        if (rc != VR_OK) { status = fail("vr_reader_wait", rc); break; }
        vr_frame f;
        size_t n = 0;
        rc = vr_read_grant(r, 1, &f, &n);
        if (rc == VR_E_EMPTY) continue;
        if (rc != VR_OK) { status = fail("reading the mic (vr_read_grant)", rc); break; }
        if (f.flags & VR_FLAG_END_OF_STREAM) break;
        if (frames == 0 && !reported) first = next = f.seq;
        if (!reported) {
            lost += f.seq - next;
            next = f.seq + 1;
            crc = vr_crc32(crc, f.data, f.len);
            frames++;
        }
        rc = vr_read_release(r, 1);
        if (rc != VR_OK) { status = fail("vr_read_release", rc); break; }
        if (speak(w, &oc, level, &rc)) spoken++;
        else if (rc == VR_OK) dropped++;
        else { status = fail("speaking (vr_write_grant/commit)", rc); break; }
        if (!reported && frames == want) {
            printf("{\"first_seq\": %llu, \"frames\": %llu, \"lost\": %llu, \"crc\": \"%08x\", "
                   "\"spoken\": %llu, \"dropped\": %llu}\n",
                   (unsigned long long)first, (unsigned long long)frames,
                   (unsigned long long)lost, crc, (unsigned long long)spoken,
                   (unsigned long long)dropped);
            fflush(stdout);
            reported = 1;
        }
    }
    vr_writer_destroy(w);
    vr_reader_destroy(r);
    if (!reported && status == 0) {
        fprintf(stderr, "hub_agent: the stream ended after %llu of %llu frames\n",
                (unsigned long long)frames, want);
        status = 1;
    }
    return status;
}
