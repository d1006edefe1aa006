/* otov3's fused optimizer kernels: one trip through memory per parameter for the base direction (spec §5.1),
 * the per-row reductions ‖x‖², ⟨x,d⟩, ‖d‖² that the group decisions need, and the update; and the deferred
 * row-factor update. Eager PyTorch needs a separate pass per operation; see otov3/optim/_native.py, which
 * compiles this file on first use and calls it through ctypes. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

typedef void (*range_fn)(const void *args, int64_t r0, int64_t r1);

#define MAX_THREADS 64
/* A batch below this many scalars per thread is not worth a thread of its own. */
#define PER_THREAD (1 << 18)

/* One thread's share of a batch: the rows whose first scalar falls in [lo, hi) of the batch's scalars. */
typedef struct {
    range_fn fn;
    const char *args;
    size_t stride;
    int64_t n;
    const int64_t *meta;
    int64_t lo, hi;
} share_t;

static void *run_share(void *p) {
    const share_t *s = p;
    int64_t start = 0;
    for (int64_t t = 0; t < s->n && start < s->hi; ++t) {
        const int64_t rows = s->meta[4 * t], w = s->meta[4 * t + 1], size = rows * w;
        if (size > 0 && start + size > s->lo) {
            int64_t r0 = s->lo > start ? (s->lo - start + w - 1) / w : 0;
            int64_t r1 = (s->hi - start + w - 1) / w;
            r1 = r1 < rows ? r1 : rows;
            if (r0 < r1) s->fn(s->args + t * s->stride, r0, r1);
        }
        start += size;
    }
    return NULL;
}

/* Runs fn over every row of the n tensors of a batch (tensor t's arguments at args + t·stride, its shape in
 * meta[4t], meta[4t+1]): with one thread tensor by tensor, else split into `threads` equal shares of scalars by
 * whole rows, so that each row is handled by one thread and the results do not depend on the thread count. */
static void run_batch(range_fn fn, const void *args, size_t stride, int64_t n, const int64_t *meta,
                      int64_t threads) {
    int64_t total = 0;
    for (int64_t t = 0; t < n; ++t) total += meta[4 * t] * meta[4 * t + 1];
    const int64_t most = total / PER_THREAD;
    threads = threads < most ? threads : most;
    threads = threads < MAX_THREADS ? threads : MAX_THREADS;
    if (threads <= 1) {
        for (int64_t t = 0; t < n; ++t) fn((const char *)args + t * stride, 0, meta[4 * t]);
        return;
    }
    pthread_t tid[MAX_THREADS];
    share_t shares[MAX_THREADS];
    int started[MAX_THREADS];
    for (int64_t k = 0; k < threads; ++k) {
        shares[k] = (share_t){fn, args, stride, n, meta, total * k / threads, total * (k + 1) / threads};
        started[k] = k > 0 && pthread_create(&tid[k], NULL, run_share, &shares[k]) == 0;
    }
    for (int64_t k = 0; k < threads; ++k)
        if (!started[k]) run_share(&shares[k]);
    for (int64_t k = 1; k < threads; ++k)
        if (started[k]) pthread_join(tid[k], NULL);
}

/* Returned by a kernel that could not allocate its per-tensor arguments. */
#define OUT_OF_MEMORY (-(INT64_C(1) << 40))

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

int64_t otov3_abi_version(void) { return 6; }

/* The λ rule and half-space test of spec §5.3–§5.5 for G groups, as `_halfspace.decide` computes them (same
 * operations in the same order, in double). pg holds per group ‖x‖², ⟨x,d⟩, ‖d‖², Σ(1−α·wd)‖x‖², Σα‖x‖²,
 * Σα⟨x,d⟩; targets the groups under the λ step. Out: c_g = λ_g/‖x_g‖ (0 where projected or not a target), the row
 * multiplier m_g (0 projected, `post` other targets, 1 the rest) and whether g is projected. Returns how many are. */
int64_t otov3_halfspace(int64_t n, const double *pg, const uint8_t *targets, double lam, double eta, double kappa,
                        double epsilon, int64_t force, double post, double *c_out, double *m_out,
                        uint8_t *project_out) {
    int64_t count = 0;
    for (int64_t g = 0; g < n; ++g) {
        const double *s = pg + 6 * g;
        const double x_sq = s[0], xd = s[1], d_sq = s[2], keep_sq = s[3], ax_sq = s[4], axd = s[5];
        double c = 0.0;
        int project = 0;
        if (targets[g]) {
            const double x_norm = sqrt(x_sq), d_norm = sqrt(d_sq);
            double lam_g = lam;
            if (xd < 0 && x_norm > 0) {
                const double lb = -xd / x_norm;
                const double ub = d_norm * d_norm * x_norm / -xd;
                double clipped = eta * lb;
                clipped = clipped < lam ? lam : clipped;
                clipped = clipped > kappa * lam ? kappa * lam : clipped;
                lam_g = clipped >= ub ? (lb + ub) / 2 : clipped;
            }
            if (x_norm > 0) c = lam_g / x_norm;
            const double trial = keep_sq - c * ax_sq - axd;
            project = trial < epsilon * x_sq || x_sq == 0 || force;
        }
        project_out[g] = (uint8_t)project;
        c_out[g] = project ? 0.0 : c;
        m_out[g] = project ? 0.0 : targets[g] ? post : 1.0;
        count += project;
    }
    return count;
}

/* Per-group sums of the row reductions (`DirectionPass._reduce` with one α and one σ): out[g] = factors ·
 * (Σ‖x‖², Σ⟨x,d⟩, Σ‖d‖², Σ‖x‖², Σ‖x‖², Σ⟨x,d⟩) over the rows r of group g, added in row order. Returns 1 when a
 * row sum is NaN or Inf (then out is not filled), else 0. */
int64_t otov3_group_sums(int64_t n_rows, const int64_t *row_group, const double *sums, int64_t n_groups,
                         const double *factors, double *out) {
    for (int64_t r = 0; r < 3 * n_rows; ++r)
        if (!isfinite(sums[r])) return 1;
    for (int64_t g = 0; g < 6 * n_groups; ++g) out[g] = 0.0;
    for (int64_t r = 0; r < n_rows; ++r) {
        const int64_t g = row_group[r];
        if (g < 0 || g >= n_groups) continue;
        double *o = out + 6 * g;
        o[0] += sums[3 * r];
        o[1] += sums[3 * r + 1];
        o[2] += sums[3 * r + 2];
    }
    static const int col[6] = {0, 1, 2, 0, 0, 1};
    for (int64_t g = n_groups - 1; g >= 0; --g) {
        double *o = out + 6 * g;
        const double s[3] = {o[0], o[1], o[2]};
        for (int k = 0; k < 6; ++k) o[k] = factors[k] * s[col[k]];
    }
    return 0;
}
