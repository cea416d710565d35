/* The consumer of `voxring bench ipc --transports c-voxring`: a C program reading a voxring
 * ring through the C ABI. The producer (the voxring binary) commits frame i (F32 samples, the
 * first and last = i mod 2^24) stamped with CLOCK_MONOTONIC, and writes the next only once it
 * is released (a ping-pong). For every frame: grant it if it is there, else wait (spin, then
 * futex park); hand-off = vr_monotonic_ns() once granted minus the stamp; check the markers;
 * release.
 *
 *   bench_consumer RING WARMUP MESSAGES EXTRA
 *
 * Prints "ready" once joined, then one JSON line:
 * {"latencies_ns": [...], "consumer_cpu_ns": N, "transport": "shm"}. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "voxring.h"

static uint64_t cpu_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int fail(const char *what, int32_t code) {
    char msg[1024];
    vr_last_error(msg, sizeof msg);
    fprintf(stderr, "bench_consumer: %s: %s\n  %s\n", what, vr_strerror(code), msg);
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: bench_consumer RING WARMUP MESSAGES EXTRA\n");
        return 2;
    }
    uint64_t warmup = strtoull(argv[2], NULL, 10), messages = strtoull(argv[3], NULL, 10),
             extra = strtoull(argv[4], NULL, 10);
    uint64_t *lat = calloc(messages ? messages : 1, sizeof *lat);
    if (!lat) return 1;
    vr_reader *r = NULL;
    int32_t rc = vr_reader_open(argv[1], NULL, VR_OPEN_NO_FALLBACK, &r);
    if (rc != VR_OK) return fail("vr_reader_open", rc);
    printf("ready\n");
    fflush(stdout);
    uint64_t cpu0 = 0, cpu = 0;
    vr_frame f;
    for (uint64_t i = 0; i < warmup + messages + extra; i++) {
        if (i == warmup) cpu0 = cpu_ns();
        size_t n = 0;
        for (;;) {
            rc = vr_read_grant(r, 1, &f, &n);
            if (rc == VR_OK) break;
            if (rc != VR_E_EMPTY) return fail("vr_read_grant", rc);
            rc = vr_reader_wait(r, 10000000000LL);
            if (rc != VR_OK) return fail("vr_reader_wait", rc);
        }
        uint64_t t = vr_monotonic_ns();
        const float *s = (const float *)f.data;
        size_t count = f.len / sizeof(float);
        float mark = (float)(i % (1u << 24));
        if (f.seq != i || count == 0 || s[0] != mark || s[count - 1] != mark) {
            fprintf(stderr, "bench_consumer: frame %llu: bad seq or markers\n", (unsigned long long)i);
            return 1;
        }
        if (i >= warmup && i < warmup + messages) lat[i - warmup] = t - f.timestamp_ns;
        rc = vr_read_release(r, 1);
        if (rc != VR_OK) return fail("vr_read_release", rc);
        if (i + 1 == warmup + messages) cpu = cpu_ns() - cpu0;
    }
    vr_reader_destroy(r);
    printf("{\"latencies_ns\": [");
    for (uint64_t i = 0; i < messages; i++) printf(i ? ",%llu" : "%llu", (unsigned long long)lat[i]);
    printf("], \"consumer_cpu_ns\": %llu, \"transport\": \"shm\"}\n", (unsigned long long)cpu);
    free(lat);
    return 0;
}
