/* otov3's fused optimizer kernels: one trip through memory per parameter for the base direction (spec §5.1),
 * the per-row reductions ‖x‖², ⟨x,d⟩, ‖d‖² that the group decisions need, and the update; and the deferred
 * row-factor update. Eager PyTorch needs a separate pass per operation; see otov3/optim/_native.py, which
 * compiles this file on first use and calls it through ctypes. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>

typedef void (*range_fn)(const void *args, int64_t r0, int64_t r1);

typedef struct {
    range_fn fn;
    const void *args;
    int64_t r0, r1;
} job_t;

static void *job_main(void *p) {
    job_t *j = p;
    j->fn(j->args, j->r0, j->r1);
    return NULL;
}

#define MAX_THREADS 64
/* Tensors below this many scalars per thread are not worth a thread of their own. */
#define PER_THREAD (1 << 18)

static int64_t threads_for(int64_t numel, int64_t threads) {
    const int64_t most = numel / PER_THREAD;
    return threads < most ? threads : (most > 1 ? most : 1);
}

/* Runs fn over rows [0, n_rows) on up to `threads` threads, each a contiguous range of whole rows. */
static void run_rows(range_fn fn, const void *args, int64_t n_rows, int64_t threads) {
    if (threads > n_rows) threads = n_rows;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads <= 1) {
        fn(args, 0, n_rows);
        return;
    }
    pthread_t tid[MAX_THREADS];
    job_t jobs[MAX_THREADS];
    int started[MAX_THREADS];
    for (int64_t t = 0; t < threads; ++t) {
        jobs[t] = (job_t){fn, args, n_rows * t / threads, n_rows * (t + 1) / threads};
        started[t] = t > 0 && pthread_create(&tid[t], NULL, job_main, &jobs[t]) == 0;
    }
    for (int64_t t = 0; t < threads; ++t)
        if (!started[t]) job_main(&jobs[t]);
    for (int64_t t = 1; t < threads; ++t)
        if (started[t]) pthread_join(tid[t], NULL);
}

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)

#define T float
#define NAME(f) CAT(f, f32)
#include "rows.h"
#undef T
#undef NAME

#define T double
#define NAME(f) CAT(f, f64)
#include "rows.h"
#undef T
#undef NAME

int64_t otov3_abi_version(void) { return 2; }
