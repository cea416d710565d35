/* A C peer of voxring through the C ABI (include/voxring.h), used by tests/c_peer.rs and as
 * the example of reading and writing a ring from C.
 *
 *   voxring_peer read NAME            join ring NAME (or its socket fallback), read until the
 *                                     END_OF_STREAM frame, check every sample, print
 *                                     "done crc=<hex> frames=<n> lost=<n> bad=<n> xruns=<n>
 *                                      transport=shm|socket-fallback"
 *   voxring_peer write NAME POLICY N  create ring NAME (POLICY lossless|lossy), print "ready",
 *                                     wait for a consumer, write N frames, print
 *                                     "done crc=<hex> frames=<n>", wait for the consumers to
 *                                     leave, destroy the ring.
 *
 * Frames: 1 channel, S16, 512 samples; sample i of frame seq = (seq * 7919 + i * 31) mod 2^16,
 * the last frame flagged VR_FLAG_END_OF_STREAM (the pattern of voxring-ffi-peer). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "voxring.h"

static int16_t pattern(uint64_t seq, size_t i) {
    return (int16_t)(uint16_t)((seq * 7919u + (uint64_t)i * 31u) & 0xffffu);
}

static int fail(const char *what, int32_t code) {
    char msg[1024];
    vr_last_error(msg, sizeof msg);
    fprintf(stderr, "voxring_peer: %s: %s\n  %s\n", what, vr_strerror(code), msg);
    return 1;
}

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

static int do_read(const char *name) {
    vr_reader *r = NULL;
    int32_t rc = vr_reader_open(name, NULL, 0, &r);
    if (rc != VR_OK) return fail("vr_reader_open", rc);
    printf("ready\n");
    fflush(stdout);
    vr_frame frames[8];
    uint32_t crc = 0;
    uint64_t count = 0, bad = 0;
    int end = 0;
    while (!end) {
        rc = vr_reader_wait(r, 30000000000LL);
        if (rc == VR_E_END_OF_STREAM) break;
        if (rc != VR_OK) { vr_reader_destroy(r); return fail("vr_reader_wait", rc); }
        size_t n = 0;
        rc = vr_read_grant(r, 8, frames, &n);
        if (rc == VR_E_EMPTY || rc == VR_E_LOST) continue;
        if (rc != VR_OK) { vr_reader_destroy(r); return fail("vr_read_grant", rc); }
        uint64_t bad_here = 0;
        for (size_t k = 0; k < n; k++) {
            const int16_t *s = (const int16_t *)frames[k].data;
            size_t samples = frames[k].len / sizeof(int16_t);
            for (size_t i = 0; i < samples; i++) {
                if (s[i] != pattern(frames[k].seq, i)) { bad_here++; break; }
            }
            crc = vr_crc32(crc, frames[k].data, frames[k].len);
            if (frames[k].flags & VR_FLAG_END_OF_STREAM) end = 1;
        }
        rc = vr_read_release(r, n);
        if (rc == VR_E_OVERWRITTEN) continue; /* counted in lost_frames; data discarded */
        if (rc != VR_OK) { vr_reader_destroy(r); return fail("vr_read_release", rc); }
        count += n;
        bad += bad_here;
    }
    vr_status st;
    vr_reader_status(r, &st);
    int transport = vr_reader_transport(r);
    printf("done crc=%08x frames=%llu lost=%llu bad=%llu xruns=%llu transport=%s\n", crc,
           (unsigned long long)count, (unsigned long long)st.lost_frames,
           (unsigned long long)bad, (unsigned long long)st.xruns,
           transport == VR_TRANSPORT_SHM ? "shm" : "socket-fallback");
    vr_reader_destroy(r);
    return 0;
}

static int do_write(const char *name, const char *policy, uint64_t total) {
    vr_config cfg = {.frames = 16, .samples_per_frame = 512, .channels = 1,
                     .format = VR_FORMAT_S16, .sample_rate = 48000, .max_consumers = 4,
                     .policy = strcmp(policy, "lossy") == 0 ? VR_POLICY_LOSSY : VR_POLICY_LOSSLESS};
    vr_writer *w = NULL;
    int32_t rc = vr_writer_create(name, &cfg, &w);
    if (rc != VR_OK) return fail("vr_writer_create", rc);
    printf("ready\n");
    fflush(stdout);
    vr_status st;
    for (int waited = 0;; waited++) {
        vr_writer_status(w, &st);
        if (st.consumers > 0) break;
        if (waited > 30000) { vr_writer_destroy(w); fprintf(stderr, "no consumer joined\n"); return 1; }
        sleep_ms(1);
    }
    uint32_t crc = 0;
    vr_frame f;
    for (uint64_t seq = 0; seq < total;) {
        size_t n = 0;
        rc = vr_write_grant(w, 1, &f, &n);
        if (rc == VR_E_FULL) {
            rc = vr_writer_wait(w, 100000000LL);
            if (rc != VR_OK && rc != VR_E_TIMEOUT) { vr_writer_destroy(w); return fail("vr_writer_wait", rc); }
            continue;
        }
        if (rc != VR_OK || n != 1) { vr_writer_destroy(w); return fail("vr_write_grant", rc); }
        int16_t *s = (int16_t *)f.data;
        for (size_t i = 0; i < f.capacity / sizeof(int16_t); i++) s[i] = pattern(f.seq, i);
        f.len = f.capacity;
        f.sample_pos = f.seq * 512;
        f.timestamp_ns = vr_monotonic_ns();
        f.flags = f.seq + 1 == total ? VR_FLAG_END_OF_STREAM : 0;
        crc = vr_crc32(crc, f.data, f.len);
        rc = vr_write_commit(w, &f, 1);
        if (rc != VR_OK) { vr_writer_destroy(w); return fail("vr_write_commit", rc); }
        seq++;
    }
    printf("done crc=%08x frames=%llu\n", crc, (unsigned long long)total);
    fflush(stdout);
    for (int waited = 0; waited < 30000; waited++) {
        vr_writer_status(w, &st);
        if (st.consumers == 0) break;
        sleep_ms(1);
    }
    vr_writer_destroy(w);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "read") == 0) return do_read(argv[2]);
    if (argc == 5 && strcmp(argv[1], "write") == 0)
        return do_write(argv[2], argv[3], strtoull(argv[4], NULL, 10));
    fprintf(stderr, "usage: voxring_peer read NAME | write NAME lossless|lossy N\n");
    return 2;
}
