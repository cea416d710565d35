/*
 * A voxring ring consumer written only from docs/protocol.md and core/LAYOUT.md: C11 atomics,
 * raw futex and fcntl calls, no voxring library and no voxring header. It is the proof that
 * those two documents are enough (platform-linux/tests/protocol_doc.rs and container.rs run
 * it); section numbers in the comments are docs/protocol.md's.
 *
 * usage: consumer NAME [--owner UID] [--allow-group] [--allow-world] [--park-ms N]
 *                      [--no-ticket]
 *   NAME          the ring /dev/shm/voxring.NAME
 *   --owner UID   the uid that must own the file, as this user namespace shows it
 *                 (default: the effective uid)
 *   --park-ms N   longest single futex wait (default 50); the producer is checked after a
 *                 wait that ended without frames
 *   --no-ticket   join WITHOUT the liveness lock and with a made-up owner token, as a reader
 *                 written from LAYOUT.md alone did: the producer's checks evict it
 *
 * stdout: "joined slot=I ticket=T token=0x..." once joined, then at the end one line
 *   "done frames=N bytes=B crc=XXXXXXXX parks=P woken=W timeouts=T stamps_ok=0|1 end=WHY"
 *   (crc: CRC-32/ISO-HDLC of every payload byte read, in order; WHY: eos, producer-gone,
 *   evicted).
 * exit: 0 eos or producer-gone, 3 evicted, 2 refused at attach (message on stderr), 1 other.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* LAYOUT.md, header block and region map. */
#define MAGIC 0x00474E4952584F56ULL
#define FIXED_BYTES 384
#define OFF_WRITE_POS 128
#define OFF_PRODUCER_OWNER 136
#define OFF_DATA_FUTEX 256
#define OFF_CONSUMERS_PARKED 260
#define OFF_SPACE_FUTEX 264
#define OFF_PRODUCER_PARKED 268
#define STATE_MASK 3u
#define STATE_FREE 0u
#define STATE_JOINING 1u
#define STATE_ACTIVE 2u
#define GEN_STEP 4u
#define FLAG_EOS 4u
#define SEQ_WRITING 0xFFFFFFFFFFFFFFFFULL
/* protocol.md section 3. */
#define PRESENCE (1ULL << 40)
#define TICKET_BASE (PRESENCE + 16)
#define TICKET_MAX 16383u

struct config {
    uint32_t policy, frames, spf, channels, format, rate, max_consumers, payload_bytes,
        slot_size;
    uint64_t slots_offset, region_size;
};

struct reader {
    int fd;
    uint8_t *base;
    struct config c;
    uint32_t index, word, ticket;
    uint64_t token, read_pos, joined_at;
    bool seen_producer;
};

static void die(int code, const char *fmt, const char *a, const char *b) {
    fprintf(stderr, "consumer: ");
    fprintf(stderr, fmt, a, b);
    fputc('\n', stderr);
    exit(code);
}

static uint32_t rd32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v; /* little-endian host: the magic check refuses anything else */
}
static uint64_t rd64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static _Atomic uint64_t *a64(const struct reader *r, uint64_t off) {
    return (_Atomic uint64_t *)(void *)(r->base + off);
}
static _Atomic uint32_t *a32(const struct reader *r, uint64_t off) {
    return (_Atomic uint32_t *)(void *)(r->base + off);
}
/* Consumer block i (LAYOUT.md: consumers_offset 384, 128 bytes each). */
static uint64_t cblock(const struct reader *r, uint32_t i) {
    (void)r;
    return 384 + 128 * (uint64_t)i;
}
static uint64_t slot_off(const struct reader *r, uint64_t pos) {
    return r->c.slots_offset + (pos & (r->c.frames - 1)) * (uint64_t)r->c.slot_size;
}

/* ---- CRC-32 (reflected 0xEDB88320, init and final xor 0xFFFFFFFF) ---- */
static uint32_t crc_table[256];
static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}
static uint32_t crc_update(uint32_t crc, const uint8_t *p, size_t n) {
    crc = ~crc;
    while (n--) crc = crc_table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

/* ---- section 2: attach ---- */
static void validate(const uint8_t *h, uint64_t file_size, struct config *c, const char *path) {
    if (rd64(h) != MAGIC) die(2, "%s: not a voxring ring (wrong magic)%s", path, "");
    if (rd32(h + 8) != 2) die(2, "%s: ring ABI version is not 2%s", path, "");
    c->policy = rd32(h + 12);
    c->frames = rd32(h + 16);
    c->spf = rd32(h + 20);
    c->channels = rd32(h + 24);
    c->format = rd32(h + 28);
    c->rate = rd32(h + 32);
    c->max_consumers = rd32(h + 36);
    uint32_t bps = c->format == 1 ? 2 : (c->format == 2 || c->format == 3) ? 4 : 0;
    bool ok = (c->policy == 1 || c->policy == 2) && bps != 0 && c->frames >= 1 &&
              c->frames <= (1u << 20) && (c->frames & (c->frames - 1)) == 0 && c->spf >= 1 &&
              c->channels >= 1 && c->channels <= 65535 && c->rate >= 1 &&
              c->max_consumers >= 1 && c->max_consumers <= 64;
    if (!ok) die(2, "%s: ring header has out-of-range fields%s", path, "");
    uint64_t payload = (uint64_t)c->spf * c->channels * bps;
    if (payload > (1u << 24)) die(2, "%s: frame payload larger than 2^24 bytes%s", path, "");
    c->payload_bytes = (uint32_t)payload;
    c->slot_size = 64 + (uint32_t)((payload + 63) / 64 * 64);
    c->slots_offset = 384 + 128 * (uint64_t)c->max_consumers;
    c->region_size = c->slots_offset + (uint64_t)c->slot_size * c->frames;
    ok = rd32(h + 40) == c->payload_bytes && rd32(h + 44) == c->slot_size &&
         rd64(h + 48) == 384 && rd64(h + 56) == c->slots_offset &&
         rd64(h + 64) == c->region_size && rd32(h + 72) == 128 && rd32(h + 76) == 64;
    if (!ok) die(2, "%s: ring header fields disagree with its configuration%s", path, "");
    if (file_size != c->region_size)
        die(2, "%s: file size is not the ring's region size (%s)", path,
            file_size > c->region_size ? "too large" : "too small");
}

static void ofd_lock(int fd, short type, uint64_t byte, int *err) {
    struct flock fl = {0};
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = (off_t)byte;
    fl.l_len = 1;
    fl.l_pid = 0; /* OFD locks require it */
    *err = fcntl(fd, F_OFD_SETLK, &fl) == 0 ? 0 : errno;
}

/* Rule 1 of section 3: another description holds a WRITE lock on the byte. */
static bool write_locked(int fd, uint64_t byte) {
    struct flock fl = {0};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = (off_t)byte;
    fl.l_len = 1;
    if (fcntl(fd, F_OFD_GETLK, &fl) != 0) return true; /* cannot tell: never judge dead */
    return fl.l_type == F_WRLCK;
}

static void attach(struct reader *r, const char *name, uid_t owner, bool allow_group,
                   bool allow_world) {
    static char path[300];
    snprintf(path, sizeof path, "/dev/shm/voxring.%s", name);
    r->fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (r->fd < 0) {
        int e = errno;
        struct stat st;
        if (e == ENOENT) die(2, "%s: no such ring (not found in this /dev/shm)%s", path, "");
        if (e == ELOOP) die(2, "%s: is a symlink: refused%s", path, "");
        if ((e == EACCES || e == EPERM) && lstat(path, &st) == 0 && st.st_uid != owner) {
            fprintf(stderr,
                    "consumer: %s: permission denied: owned by uid %u, expected owner uid %u "
                    "(uids as this user namespace sees them; 65534 is an unmapped id): "
                    "refused\n",
                    path, (unsigned)st.st_uid, (unsigned)owner);
            exit(2);
        }
        die(2, "%s: cannot open: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(r->fd, &st) != 0) die(1, "%s: fstat: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) die(2, "%s: not a regular file: refused%s", path, "");
    if (st.st_uid != owner) {
        fprintf(stderr,
                "consumer: %s: owner mismatch: owned by uid %u, expected owner uid %u (uids as "
                "this user namespace sees them; 65534 is an unmapped id): another user's ring "
                "is not trusted: refused\n",
                path, (unsigned)st.st_uid, (unsigned)owner);
        exit(2);
    }
    if ((st.st_mode & 0002) && !allow_world)
        die(2, "%s: world-writable: anyone could rewrite it: refused%s", path, "");
    if ((st.st_mode & 0020) && !allow_group)
        die(2, "%s: group-writable: refused (pass --allow-group for a group-shared ring)%s",
            path, "");
    uint8_t head[FIXED_BYTES];
    ssize_t got = pread(r->fd, head, sizeof head, 0);
    if (got != (ssize_t)sizeof head) die(2, "%s: shorter than a ring header%s", path, "");
    validate(head, (uint64_t)st.st_size, &r->c, path);
    void *m = mmap(NULL, r->c.region_size, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, 0);
    if (m == MAP_FAILED) die(1, "%s: mmap: %s", path, strerror(errno));
    r->base = m;
    /* Acquire: pairs with the creator's Release store of the magic (LAYOUT.md header). */
    if (atomic_load_explicit(a64(r, 0), memory_order_acquire) != MAGIC)
        die(2, "%s: magic changed after validation%s", path, "");
    int err;
    ofd_lock(r->fd, F_RDLCK, PRESENCE, &err);
    if (err) die(1, "%s: presence lock: %s", path, strerror(err));
}

/* ---- section 3: ticket and owner token ---- */
static bool ticket_in_ring(const struct reader *r, uint32_t t) {
    uint64_t p = atomic_load_explicit(a64(r, OFF_PRODUCER_OWNER), memory_order_relaxed);
    if (p != 0 && (p & TICKET_MAX) == t) return true;
    for (uint32_t i = 0; i < r->c.max_consumers; i++) {
        uint64_t b = cblock(r, i);
        /* Acquire: pairs with a joiner's SeqCst state store, which publishes its owner. */
        uint32_t s = atomic_load_explicit(a32(r, b + 16), memory_order_acquire);
        uint64_t o = atomic_load_explicit(a64(r, b + 8), memory_order_relaxed);
        if ((s & STATE_MASK) != STATE_FREE && (o & TICKET_MAX) == t) return true;
    }
    return false;
}

static uint64_t identity_bits(void) {
    char link[32] = {0};
    if (readlink("/proc/self", link, sizeof link - 1) <= 0) return 0;
    if (strtol(link, NULL, 10) != (long)getpid()) return 0; /* /proc of another PID ns */
    struct stat ns;
    if (stat("/proc/self/ns/pid", &ns) != 0) return 0;
    FILE *f = fopen("/proc/self/stat", "re");
    if (!f) return 0;
    char buf[1024];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *rest = strrchr(buf, ')');
    if (!rest) return 0;
    /* rest + 2 is field 3; field 22 is 19 fields further on. */
    char *tok = strtok(rest + 2, " ");
    for (int field = 3; tok && field < 22; field++) tok = strtok(NULL, " ");
    if (!tok) return 0;
    uint64_t start = strtoull(tok, NULL, 10);
    return ((uint64_t)getpid() & 0x3FFFFF) << 42 | ((uint64_t)ns.st_ino & 0xFFFF) << 26 |
           (start & 0xFFF) << 14;
}

static void take_ticket(struct reader *r) {
    for (int tries = 0; tries < 64; tries++) {
        uint32_t t = 0;
        if (getrandom(&t, sizeof t, 0) != sizeof t) die(1, "getrandom failed%s%s", "", "");
        t &= TICKET_MAX;
        if (t == 0 || ticket_in_ring(r, t)) continue;
        int err;
        ofd_lock(r->fd, F_WRLCK, TICKET_BASE + t, &err);
        if (err == 0) {
            r->ticket = t;
            r->token = identity_bits() | t;
            return;
        }
        if (err != EAGAIN && err != EACCES) die(1, "ticket lock: %s%s", strerror(err), "");
    }
    die(1, "no free liveness ticket after 64 tries%s%s", "", "");
}

/* ---- section 4: join (LAYOUT.md consumer step 1) ---- */
static void join(struct reader *r) {
    for (uint32_t i = 0; i < r->c.max_consumers; i++) {
        uint64_t b = cblock(r, i);
        _Atomic uint32_t *state = a32(r, b + 16);
        uint32_t st = atomic_load_explicit(state, memory_order_relaxed);
        if ((st & STATE_MASK) != STATE_FREE) continue;
        uint32_t gen = st & ~STATE_MASK;
        /* Acquire: pairs with the Release that freed the slot (leave or evict). */
        if (!atomic_compare_exchange_strong_explicit(state, &st, gen | STATE_JOINING,
                                                     memory_order_acquire,
                                                     memory_order_relaxed))
            continue;
        r->index = i;
        r->word = (gen + GEN_STEP) | STATE_ACTIVE;
        atomic_store_explicit(a64(r, b + 8), r->token, memory_order_relaxed);
        atomic_store_explicit(a64(r, b + 24), 0, memory_order_relaxed);
        /* Acquire: pairs with the producer's Release commit of write_pos. */
        uint64_t w0 = atomic_load_explicit(a64(r, OFF_WRITE_POS), memory_order_acquire);
        atomic_store_explicit(a64(r, b), w0, memory_order_relaxed);
        /* SeqCst: publishes owner and read_pos with the state, and is the Dekker half the
         * producer's fence + state load pairs with. */
        atomic_store_explicit(state, r->word, memory_order_seq_cst);
        atomic_thread_fence(memory_order_seq_cst);
        uint64_t w1 = atomic_load_explicit(a64(r, OFF_WRITE_POS), memory_order_acquire);
        /* Release: pairs with the producer's Acquire load of read_pos. */
        atomic_store_explicit(a64(r, b), w1, memory_order_release);
        r->read_pos = r->joined_at = w1;
        return;
    }
    die(1, "every consumer slot is taken%s%s", "", "");
}

static bool member(const struct reader *r) {
    /* Acquire: pairs with an evicter's AcqRel CAS of the state. */
    return atomic_load_explicit(a32(r, cblock(r, r->index) + 16), memory_order_acquire) ==
           r->word;
}

/* LAYOUT.md consumer step 4, second half: wake a lossless producer parked on our cursor. */
static void wake_producer_if_parked(const struct reader *r) {
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(a32(r, OFF_PRODUCER_PARKED), memory_order_relaxed) == 0) return;
    /* Release: pairs with the producer's Acquire load of space_futex before it parks. */
    uint32_t old = atomic_fetch_add_explicit(a32(r, OFF_SPACE_FUTEX), 2, memory_order_release);
    if (old & 1) syscall(SYS_futex, a32(r, OFF_SPACE_FUTEX), FUTEX_WAKE, 0x7FFFFFFF, NULL, NULL, 0);
}

/* ---- section 5: park; returns 0 woken/ready, 1 timed out ---- */
static int park(const struct reader *r, long park_ms, unsigned *parks) {
    _Atomic uint32_t *word = a32(r, OFF_DATA_FUTEX);
    atomic_fetch_add_explicit(a32(r, OFF_CONSUMERS_PARKED), 1, memory_order_seq_cst);
    /* Acquire: pairs with the producer's Release swap of data_futex. */
    uint32_t v = atomic_load_explicit(word, memory_order_acquire);
    atomic_thread_fence(memory_order_seq_cst);
    int outcome = 0;
    if (atomic_load_explicit(a64(r, OFF_WRITE_POS), memory_order_acquire) == r->read_pos) {
        uint32_t armed = v | 1;
        bool sleep = true;
        if (!(v & 1)) {
            uint32_t seen = v;
            /* Relaxed: the wake decision rests on this word's modification order alone. */
            if (!atomic_compare_exchange_strong_explicit(word, &seen, v | 1,
                                                         memory_order_relaxed,
                                                         memory_order_relaxed))
                sleep = seen == (v | 1);
        }
        if (sleep) {
            struct timespec ts = {park_ms / 1000, (park_ms % 1000) * 1000000L};
            (*parks)++;
            long rc = syscall(SYS_futex, word, FUTEX_WAIT, armed, &ts, NULL, 0);
            if (rc != 0 && errno == ETIMEDOUT) outcome = 1;
        }
    }
    atomic_fetch_sub_explicit(a32(r, OFF_CONSUMERS_PARKED), 1, memory_order_relaxed);
    return outcome;
}

/* ---- section 7: is the producer gone (after a wait without frames)? ---- */
static bool producer_gone(struct reader *r) {
    if (atomic_load_explicit(a64(r, 0), memory_order_relaxed) != MAGIC) return true;
    struct stat st;
    if (fstat(r->fd, &st) == 0 && (uint64_t)st.st_size < r->c.region_size) return true;
    uint64_t w = atomic_load_explicit(a64(r, OFF_WRITE_POS), memory_order_acquire);
    if (w != r->joined_at) r->seen_producer = true;
    uint64_t owner = atomic_load_explicit(a64(r, OFF_PRODUCER_OWNER), memory_order_acquire);
    if (owner == 0) return r->seen_producer;
    r->seen_producer = true;
    uint32_t t = (uint32_t)(owner & TICKET_MAX);
    return t == 0 || !write_locked(r->fd, TICKET_BASE + t);
}

/* ---- section 6: leave ---- */
static void leave(struct reader *r) {
    uint32_t expected = r->word;
    /* Release: pairs with the next joiner's Acquire CAS. Fails if we were evicted. */
    if (atomic_compare_exchange_strong_explicit(a32(r, cblock(r, r->index) + 16), &expected,
                                                (r->word & ~STATE_MASK) | STATE_FREE,
                                                memory_order_release, memory_order_relaxed) &&
        r->c.policy == 1)
        wake_producer_if_parked(r);
    int err;
    if (r->ticket) ofd_lock(r->fd, F_UNLCK, TICKET_BASE + r->ticket, &err);
    munmap(r->base, r->c.region_size);
    close(r->fd);
}

static uint64_t monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 2) die(1, "usage: consumer NAME [--owner UID] [--park-ms N] ...%s%s", "", "");
    uid_t owner = geteuid();
    bool allow_group = false, allow_world = false, no_ticket = false;
    long park_ms = 50;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--owner") && i + 1 < argc) owner = (uid_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "--park-ms") && i + 1 < argc) park_ms = atol(argv[++i]);
        else if (!strcmp(argv[i], "--allow-group")) allow_group = true;
        else if (!strcmp(argv[i], "--allow-world")) allow_world = true;
        else if (!strcmp(argv[i], "--no-ticket")) no_ticket = true;
        else die(1, "unknown option %s%s", argv[i], "");
    }
    crc_init();
    struct reader r = {0};
    attach(&r, argv[1], owner, allow_group, allow_world);
    if (no_ticket)
        r.token = (uint64_t)getpid() << 14 | 1; /* "opaque" token, no lock: the old mistake */
    else
        take_ticket(&r);
    join(&r);
    printf("joined slot=%u ticket=%u token=0x%016" PRIx64 "\n", r.index, r.ticket, r.token);
    fflush(stdout);

    uint8_t *copy = malloc(r.c.payload_bytes ? r.c.payload_bytes : 1);
    if (!copy) die(1, "out of memory%s%s", "", "");
    uint32_t crc = 0;
    uint64_t frames = 0, bytes = 0;
    unsigned parks = 0, woken = 0, timeouts = 0;
    bool stamps_ok = true;
    const char *end = NULL;
    while (!end) {
        if (!member(&r)) { end = "evicted"; break; }
        uint64_t w = atomic_load_explicit(a64(&r, OFF_WRITE_POS), memory_order_acquire);
        if (w == r.read_pos) {
            if (park(&r, park_ms, &parks) == 0) { woken++; continue; }
            timeouts++;
            if (atomic_load_explicit(a64(&r, OFF_WRITE_POS), memory_order_acquire) == r.read_pos &&
                producer_gone(&r))
                end = "producer-gone";
            continue;
        }
        if (w - r.read_pos > r.c.frames) die(1, "corrupt cursor: write_pos ahead by more than the ring%s%s", "", "");
        uint64_t s = slot_off(&r, r.read_pos);
        if (atomic_load_explicit(a64(&r, s), memory_order_acquire) != r.read_pos)
            die(1, "slot sequence number does not match its position%s%s", "", "");
        uint64_t stamp = atomic_load_explicit(a64(&r, s + 16), memory_order_relaxed);
        uint32_t flags = atomic_load_explicit(a32(&r, s + 24), memory_order_relaxed);
        uint32_t len = atomic_load_explicit(a32(&r, s + 28), memory_order_relaxed);
        if (len > r.c.payload_bytes) len = r.c.payload_bytes;
        /* Plain copy of the payload: the producer does not write this slot again before our
         * Release store of read_pos below (lossless), or the seq re-check catches it (lossy). */
        memcpy(copy, r.base + s + 64, len);
        if (r.c.policy == 2) {
            atomic_thread_fence(memory_order_acquire);
            if (atomic_load_explicit(a64(&r, s), memory_order_relaxed) != r.read_pos)
                die(1, "frame overwritten while read (lossy ring lapped this reader)%s%s", "", "");
        }
        uint64_t now = monotonic_ns();
        if (stamp == 0 || stamp > now) stamps_ok = false;
        crc = crc_update(crc, copy, len);
        bytes += len;
        frames++;
        if (!member(&r)) { end = "evicted"; break; }
        r.read_pos++;
        atomic_store_explicit(a64(&r, cblock(&r, r.index)), r.read_pos, memory_order_release);
        if (r.c.policy == 1) wake_producer_if_parked(&r);
        if (flags & FLAG_EOS) end = "eos";
    }
    printf("done frames=%" PRIu64 " bytes=%" PRIu64 " crc=%08x parks=%u woken=%u timeouts=%u "
           "stamps_ok=%d end=%s\n",
           frames, bytes, crc, parks, woken, timeouts, stamps_ok ? 1 : 0, end);
    fflush(stdout);
    free(copy);
    bool evicted = !strcmp(end, "evicted");
    if (evicted) {
        munmap(r.base, r.c.region_size);
        close(r.fd);
        return 3;
    }
    leave(&r);
    return 0;
}
