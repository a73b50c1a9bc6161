/* clockshim: an LD_PRELOAD library that skews one process's clocks at run time.
 *
 * The jepsen_like harness compiles this file (cc -shared -fPIC) and preloads it
 * into a node process with RMJ_CLOCK_FILE naming a small control file that the
 * harness rewrites while the node runs (jepsen_like/clock.py is the writer).
 *
 * Why not libfaketime: Debian's libfaketime 0.9.10 replaces CLOCK_MONOTONIC with
 * a wall-clock-based value and does not intercept sem_clockwait, so every timed
 * lock wait of Python 3.11 (threading.Event.wait(t), Lock.acquire(timeout=t))
 * blocks forever under it, with or without an offset.
 *
 * What it fakes:
 *   realtime  (CLOCK_REALTIME, _COARSE, gettimeofday, time): real + offset.
 *             Jumps and strobes are offset changes.
 *   monotonic (CLOCK_MONOTONIC, _RAW, _COARSE, CLOCK_BOOTTIME): a line through
 *             an anchor, fake = anchor_fake + (real - anchor_real) * rate. The
 *             writer moves the anchor when it changes the rate, so the fake
 *             clock stays continuous; a rate below 1 is a slow clock.
 * Absolute deadlines handed to the C library (clock_nanosleep TIMER_ABSTIME,
 * sem_clockwait, sem_timedwait, pthread_cond_timedwait/clockwait,
 * pthread_mutex_timedlock/clocklock) are mapped back to the real clock, so a
 * skewed process waits as long as it believes it waits, and nothing hangs.
 * Deadlines passed straight to the kernel by raw syscalls (e.g. Rust's futex
 * waits) are not mapped.
 *
 * Control file: 48 bytes, native endian, written under a sequence lock:
 *   u64 seq (odd while the writer is in the middle of an update)
 *   i64 real_offset_ns
 *   i64 mono_anchor_real_ns, i64 mono_anchor_fake_ns, i64 mono_rate_ppb
 *   u64 magic "RMJCLK01"
 * A missing or malformed file means: no skew.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define CONTROL_BYTES 48
#define CONTROL_MAGIC 0x31304b4c434a4d52ULL /* "RMJCLK01" little endian */
#define NS_PER_S 1000000000LL
#define PPB 1000000000LL
#define CONDS_MAX 4096

struct control {
    volatile uint64_t seq;
    volatile int64_t real_offset_ns;
    volatile int64_t mono_anchor_real_ns;
    volatile int64_t mono_anchor_fake_ns;
    volatile int64_t mono_rate_ppb;
    volatile uint64_t magic;
};

struct skew {
    int64_t real_offset_ns;
    int64_t anchor_real_ns;
    int64_t anchor_fake_ns;
    int64_t rate_ppb;
};

static struct control *ctl = NULL;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static int (*real_clock_gettime)(clockid_t, struct timespec *);
static int (*real_clock_nanosleep)(clockid_t, int, const struct timespec *, struct timespec *);
static int (*real_sem_clockwait)(sem_t *, clockid_t, const struct timespec *);
static int (*real_sem_timedwait)(sem_t *, const struct timespec *);
static int (*real_cond_init)(pthread_cond_t *, const pthread_condattr_t *);
static int (*real_cond_destroy)(pthread_cond_t *);
static int (*real_cond_timedwait)(pthread_cond_t *, pthread_mutex_t *, const struct timespec *);
static int (*real_cond_clockwait)(pthread_cond_t *, pthread_mutex_t *, clockid_t, const struct timespec *);
static int (*real_mutex_timedlock)(pthread_mutex_t *, const struct timespec *);
static int (*real_mutex_clocklock)(pthread_mutex_t *, clockid_t, const struct timespec *);

/* Condition variables initialised with a monotonic clock attribute; every
 * other one uses CLOCK_REALTIME (the default, and PTHREAD_COND_INITIALIZER). */
static pthread_cond_t *volatile mono_conds[CONDS_MAX];

static void *next_symbol(const char *name, const char *version) {
    void *sym = NULL;
    if (version != NULL) sym = dlvsym(RTLD_NEXT, name, version);
    if (sym == NULL) sym = dlsym(RTLD_NEXT, name);
    return sym;
}

static void load(void) {
    real_clock_gettime = next_symbol("clock_gettime", NULL);
    real_clock_nanosleep = next_symbol("clock_nanosleep", NULL);
    real_sem_clockwait = next_symbol("sem_clockwait", NULL);
    real_sem_timedwait = next_symbol("sem_timedwait", NULL);
    /* The pthread_cond_* symbols have an old compat version; ask for the real one. */
    real_cond_init = next_symbol("pthread_cond_init", "GLIBC_2.3.2");
    real_cond_destroy = next_symbol("pthread_cond_destroy", "GLIBC_2.3.2");
    real_cond_timedwait = next_symbol("pthread_cond_timedwait", "GLIBC_2.3.2");
    real_cond_clockwait = next_symbol("pthread_cond_clockwait", NULL);
    real_mutex_timedlock = next_symbol("pthread_mutex_timedlock", NULL);
    real_mutex_clocklock = next_symbol("pthread_mutex_clocklock", NULL);
    const char *path = getenv("RMJ_CLOCK_FILE");
    if (path == NULL || *path == '\0') return;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    void *map = mmap(NULL, CONTROL_BYTES, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return;
    ctl = (struct control *)map;
}

static void ensure_loaded(void) { pthread_once(&init_once, load); }

static int read_skew(struct skew *out) {
    ensure_loaded();
    if (ctl == NULL || ctl->magic != CONTROL_MAGIC) return 0;
    for (int spins = 0; spins < 1000000; spins++) {
        uint64_t s1 = __atomic_load_n(&ctl->seq, __ATOMIC_ACQUIRE);
        if (s1 & 1) continue;
        out->real_offset_ns = ctl->real_offset_ns;
        out->anchor_real_ns = ctl->mono_anchor_real_ns;
        out->anchor_fake_ns = ctl->mono_anchor_fake_ns;
        out->rate_ppb = ctl->mono_rate_ppb;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&ctl->seq, __ATOMIC_ACQUIRE) == s1) {
            if (out->rate_ppb <= 0) out->rate_ppb = PPB;
            return 1;
        }
    }
    return 0;
}

static int is_mono(clockid_t clk) {
    return clk == CLOCK_MONOTONIC || clk == CLOCK_MONOTONIC_RAW || clk == CLOCK_MONOTONIC_COARSE ||
           clk == CLOCK_BOOTTIME;
}

static int is_real(clockid_t clk) { return clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE; }

static int64_t to_ns(const struct timespec *ts) { return (int64_t)ts->tv_sec * NS_PER_S + ts->tv_nsec; }

static struct timespec from_ns(int64_t ns) {
    struct timespec ts;
    if (ns < 0) ns = 0;
    ts.tv_sec = ns / NS_PER_S;
    ts.tv_nsec = ns % NS_PER_S;
    return ts;
}

static int64_t scale(int64_t delta, int64_t num, int64_t den) {
    return (int64_t)((__int128)delta * num / den);
}

/* real -> fake */
static int64_t fake_ns(clockid_t clk, int64_t real, const struct skew *sk) {
    if (is_real(clk)) return real + sk->real_offset_ns;
    if (is_mono(clk)) return sk->anchor_fake_ns + scale(real - sk->anchor_real_ns, sk->rate_ppb, PPB);
    return real;
}

/* fake -> real: where an absolute deadline in the fake clock lies on the real one */
static int64_t real_ns(clockid_t clk, int64_t fake, const struct skew *sk) {
    if (is_real(clk)) return fake - sk->real_offset_ns;
    if (is_mono(clk)) return sk->anchor_real_ns + scale(fake - sk->anchor_fake_ns, PPB, sk->rate_ppb);
    return fake;
}

static const struct timespec *map_deadline(clockid_t clk, const struct timespec *abstime, struct timespec *buf) {
    struct skew sk;
    if (abstime == NULL || !read_skew(&sk)) return abstime;
    *buf = from_ns(real_ns(clk, to_ns(abstime), &sk));
    return buf;
}

int clock_gettime(clockid_t clk, struct timespec *ts) {
    ensure_loaded();
    int rc = real_clock_gettime != NULL ? real_clock_gettime(clk, ts) : (int)syscall(SYS_clock_gettime, clk, ts);
    struct skew sk;
    if (rc == 0 && ts != NULL && (is_real(clk) || is_mono(clk)) && read_skew(&sk))
        *ts = from_ns(fake_ns(clk, to_ns(ts), &sk));
    return rc;
}

int gettimeofday(struct timeval *tv, void *tz) {
    (void)tz;
    struct timespec ts;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    if (rc == 0 && tv != NULL) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return rc;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out != NULL) *out = ts.tv_sec;
    return ts.tv_sec;
}

int clock_nanosleep(clockid_t clk, int flags, const struct timespec *req, struct timespec *rem) {
    ensure_loaded();
    struct timespec buf;
    if (flags & TIMER_ABSTIME) req = map_deadline(clk, req, &buf);
    return real_clock_nanosleep(clk, flags, req, rem);
}

int sem_clockwait(sem_t *sem, clockid_t clk, const struct timespec *abstime) {
    ensure_loaded();
    struct timespec buf;
    return real_sem_clockwait(sem, clk, map_deadline(clk, abstime, &buf));
}

int sem_timedwait(sem_t *sem, const struct timespec *abstime) {
    ensure_loaded();
    struct timespec buf;
    return real_sem_timedwait(sem, map_deadline(CLOCK_REALTIME, abstime, &buf));
}

static int cond_is_mono(pthread_cond_t *cond) {
    for (int i = 0; i < CONDS_MAX; i++)
        if (mono_conds[i] == cond) return 1;
    return 0;
}

int pthread_cond_init(pthread_cond_t *cond, const pthread_condattr_t *attr) {
    ensure_loaded();
    int rc = real_cond_init(cond, attr);
    clockid_t clk = CLOCK_REALTIME;
    if (rc == 0 && attr != NULL && pthread_condattr_getclock(attr, &clk) == 0 && is_mono(clk)) {
        for (int i = 0; i < CONDS_MAX; i++) {
            pthread_cond_t *expected = NULL;
            if (__atomic_compare_exchange_n(&mono_conds[i], &expected, cond, 0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE))
                break;
        }
    }
    return rc;
}

int pthread_cond_destroy(pthread_cond_t *cond) {
    ensure_loaded();
    for (int i = 0; i < CONDS_MAX; i++) {
        pthread_cond_t *expected = cond;
        __atomic_compare_exchange_n(&mono_conds[i], &expected, NULL, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    return real_cond_destroy(cond);
}

int pthread_cond_timedwait(pthread_cond_t *cond, pthread_mutex_t *mutex, const struct timespec *abstime) {
    ensure_loaded();
    struct timespec buf;
    clockid_t clk = cond_is_mono(cond) ? CLOCK_MONOTONIC : CLOCK_REALTIME;
    return real_cond_timedwait(cond, mutex, map_deadline(clk, abstime, &buf));
}

int pthread_cond_clockwait(pthread_cond_t *cond, pthread_mutex_t *mutex, clockid_t clk,
                           const struct timespec *abstime) {
    ensure_loaded();
    struct timespec buf;
    return real_cond_clockwait(cond, mutex, clk, map_deadline(clk, abstime, &buf));
}

int pthread_mutex_timedlock(pthread_mutex_t *mutex, const struct timespec *abstime) {
    ensure_loaded();
    struct timespec buf;
    return real_mutex_timedlock(mutex, map_deadline(CLOCK_REALTIME, abstime, &buf));
}

int pthread_mutex_clocklock(pthread_mutex_t *mutex, clockid_t clk, const struct timespec *abstime) {
    ensure_loaded();
    struct timespec buf;
    return real_mutex_clocklock(mutex, clk, map_deadline(clk, abstime, &buf));
}
