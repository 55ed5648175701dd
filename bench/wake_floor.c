/*
 * The native wake-up floor: what a hand-off between sleeping processes costs on this machine.
 *
 * N processes (forked, sharing one anonymous mapping) stand in a ring.  Each
 * owns a slot; it blocks in futex(FUTEX_WAIT) until its slot's sequence
 * number changes, then stamps the next slot with the time and bumps its
 * sequence number and futex-wakes the next process.  Process 0 starts each
 * round: it waits GAP_US (as a ping waits between echo requests, so every
 * process is asleep when the token comes), hands the token on, and blocks
 * until it comes back round.  A round trip is N hand-offs, N wake-ups: with
 * N = 7 the shape of a ping through pipelines/bridge-veth.toml (the pinging
 * process, then RX, worker, TX towards host B and RX, worker, TX back).
 *
 *     cc -O2 -o wake_floor wake_floor.c && ./wake_floor [processes [rounds [gap_us]]]
 *
 * Output: one line per measured round (after WARMUP unmeasured ones): the
 * round trip in ns, then the N hop latencies in ns (from the moment the
 * previous process stamped a slot to the moment its owner woke and read
 * the clock; hop i ends at process i, so hop 0 is the last one of the
 * round).  bench/wake_floor.py builds, runs and summarises it.  No work is
 * done per hop beyond the clock and the futex calls: any pipeline of
 * processes that sleep between packets pays at least this.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_PROCESSES 64
#define WARMUP 5

struct slot {                            /* one cache line per process: no false sharing between hops */
    uint32_t seq;                        /* the futex word: bumped once per hand-off */
    uint32_t stop;
    uint64_t stamped_ns;                 /* when the previous process handed the token on */
    char pad[48];
};

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void futex_wait(uint32_t *word, uint32_t seen)
{
    /* shared (not _PRIVATE) futex: the word lives in a mapping shared by processes */
    while (__atomic_load_n(word, __ATOMIC_ACQUIRE) == seen)
        if (syscall(SYS_futex, word, FUTEX_WAIT, seen, NULL, NULL, 0) == -1 && errno != EAGAIN && errno != EINTR) {
            perror("futex wait");
            exit(1);
        }
}

static void hand_on(struct slot *next)
{
    next->stamped_ns = now_ns();
    __atomic_add_fetch(&next->seq, 1, __ATOMIC_RELEASE);
    syscall(SYS_futex, &next->seq, FUTEX_WAKE, 1, NULL, NULL, 0);
}

/* Process i of n: wait for the token, note the hop, pass it on; until slot i says stop. */
static void member(struct slot *slots, uint64_t *hops, int i, int n, int rounds)
{
    uint32_t seen = 0;
    for (int r = 0;; r++) {
        futex_wait(&slots[i].seq, seen);
        uint64_t woke = now_ns();
        seen = __atomic_load_n(&slots[i].seq, __ATOMIC_ACQUIRE);
        if (__atomic_load_n(&slots[i].stop, __ATOMIC_ACQUIRE))
            _exit(0);
        if (r >= WARMUP && r < WARMUP + rounds)
            hops[(size_t)(r - WARMUP) * n + i] = woke - slots[i].stamped_ns;
        hand_on(&slots[(i + 1) % n]);
    }
}

static int parse(const char *s, int lo, int hi, const char *what)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || v < lo || v > hi) {
        fprintf(stderr, "wake_floor: %s must be an integer in %d..%d, not %s\n", what, lo, hi, s);
        exit(2);
    }
    return (int)v;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? parse(argv[1], 2, MAX_PROCESSES, "processes") : 7;
    int rounds = argc > 2 ? parse(argv[2], 1, 10000000, "rounds") : 200;
    int gap_us = argc > 3 ? parse(argv[3], 0, 10000000, "gap_us") : 20000;
    size_t hop_bytes = (size_t)rounds * n * sizeof(uint64_t);
    size_t bytes = n * sizeof(struct slot) + hop_bytes;
    struct slot *slots = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (slots == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    uint64_t *hops = (uint64_t *)(slots + n);
    uint64_t *trips = malloc((size_t)rounds * sizeof(uint64_t));
    pid_t pids[MAX_PROCESSES];
    if (!trips) {
        perror("malloc");
        return 1;
    }
    for (int i = 1; i < n; i++) {
        pids[i] = fork();
        if (pids[i] == -1) {
            perror("fork");
            for (int j = 1; j < i; j++)
                kill(pids[j], SIGKILL);
            return 1;
        }
        if (pids[i] == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);      /* never outlive process 0 */
            if (getppid() == 1)
                _exit(1);
            member(slots, hops, i, n, rounds);
        }
    }
    uint32_t seen = 0;
    struct timespec gap = {gap_us / 1000000, (long)(gap_us % 1000000) * 1000};
    for (int r = 0; r < WARMUP + rounds; r++) {
        if (gap_us)
            nanosleep(&gap, NULL);
        uint64_t start = now_ns();
        hand_on(&slots[1]);
        futex_wait(&slots[0].seq, seen);
        uint64_t back = now_ns();
        seen = __atomic_load_n(&slots[0].seq, __ATOMIC_ACQUIRE);
        if (r >= WARMUP) {
            trips[r - WARMUP] = back - start;
            hops[(size_t)(r - WARMUP) * n] = back - slots[0].stamped_ns;
        }
    }
    for (int i = 1; i < n; i++) {
        __atomic_store_n(&slots[i].stop, 1, __ATOMIC_RELEASE);
        __atomic_add_fetch(&slots[i].seq, 1, __ATOMIC_RELEASE);
        syscall(SYS_futex, &slots[i].seq, FUTEX_WAKE, 1, NULL, NULL, 0);
    }
    int failed = 0;
    for (int i = 1; i < n; i++) {
        int status;
        if (waitpid(pids[i], &status, 0) == -1 || !WIFEXITED(status) || WEXITSTATUS(status))
            failed = 1;
    }
    if (failed) {
        fprintf(stderr, "wake_floor: a member process failed\n");
        return 1;
    }
    for (int r = 0; r < rounds; r++) {
        printf("%llu", (unsigned long long)trips[r]);
        for (int i = 0; i < n; i++)
            printf(" %llu", (unsigned long long)hops[(size_t)r * n + i]);
        putchar('\n');
    }
    return 0;
}
