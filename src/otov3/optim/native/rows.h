/* The fused kernels for one floating type. Included by fused.c once per type with T (the element type) and
 * NAME(f) (the exported name of f for that type) defined.
 *
 * Every entry point takes a list of tensors, so that one call from Python steps a whole param group. Tensor t is
 * seen as meta[4t] rows of meta[4t+1] contiguous scalars; meta[4t+2] is the global number of its first row (-1:
 * no group owns it), under which its per-row data sits in the global arrays (0/1 keep flags, the row factors m·a
 * and m, the three reductions ‖x‖², ⟨x,d⟩, ‖d‖², whether a row waits); meta[4t+3] holds flags: bit 0 reductions
 * wanted, bit 1 a fresh SGD buffer, bits 2–3 what happens to x (0 kept for a later update — only the rows flagged
 * in `held` when it is given, the others take the plain step —, 1 the plain step, 2 the row factors). Each row
 * is handled by one thread from start to end (`run_batch`), so the results do not depend on the number of threads. */

/* Runs the loop body (the variadic part) for i in [0, w) as SIMD loops over blocks of BLOCK scalars. The body
 * adds to the block's accumulators bxx, bxd, bdd (type T: vectorised); each block's totals are then added to the
 * row's double sums sxx, sxd, sdd, so precision does not degrade with the row's width. */
#ifndef BLOCKED_ROW
#define BLOCK 512
#define BLOCKED_ROW(T_, w, ...)                                                   \
    for (int64_t i0 = 0; i0 < (w); i0 += BLOCK) {                                \
        const int64_t i1 = i0 + BLOCK < (w) ? i0 + BLOCK : (w);                  \
        T_ bxx = 0, bxd = 0, bdd = 0;                                             \
        _Pragma("omp simd reduction(+:bxx, bxd, bdd)")                           \
        for (int64_t i = i0; i < i1; ++i) __VA_ARGS__                             \
        sxx += bxx; sxd += bxd; sdd += bdd;                                       \
    }
/* Rows narrower than NARROW (norm scales and shifts: width 1; depthwise 3×3 kernels: 9; 1×1 convolutions of 16
 * channels) run as plain loops: a vector loop's set-up and horizontal sums cost more than such a row's few scalars
 * (DARTS-14's SGD pass: 35 → 22 ms). */
#define NARROW 32
#define ROW_LOOP(T_, w, ...)                                                      \
    if ((w) < NARROW) {                                                           \
        T_ bxx = 0, bxd = 0, bdd = 0;                                             \
        for (int64_t i = 0; i < (w); ++i) __VA_ARGS__                             \
        sxx += bxx; sxd += bxd; sdd += bdd;                                       \
    } else                                                                        \
        BLOCKED_ROW(T_, w, __VA_ARGS__)
#endif

/* The per-row data of one tensor, offset to its first row (NULL where absent or not wanted). */
typedef struct {
    const T *keep, *fa, *fm;
    const uint8_t *held;  /* mode 0: the rows that wait (NULL: all); the others take the plain step now */
    double *sums;
    int mode;
} NAME(row_data);

static NAME(row_data) NAME(row_data_of)(const int64_t *meta, const T *keep, double *sums, const T *fa,
                                        const T *fm, const uint8_t *held) {
    const int64_t row0 = meta[2], flags = meta[3];
    NAME(row_data) d = {NULL, NULL, NULL, NULL, NULL, (int)((flags >> 2) & 3)};
    if (row0 >= 0) {
        d.keep = keep ? keep + row0 : NULL;
        d.held = held ? held + row0 : NULL;
        d.fa = fa ? fa + row0 : NULL;
        d.fm = fm ? fm + row0 : NULL;
        d.sums = (flags & 1) && sums ? sums + 3 * row0 : NULL;
    }
    if (d.mode == 2 && !d.fm) d.mode = 1; /* no factors for rows no group owns: the plain step */
    return d;
}

/* What happens to row r's x: 0 it waits, 1 the plain step, 2 the row factors. */
static inline int NAME(row_mode)(const NAME(row_data) *rd, int64_t r) {
    return rd->mode == 0 && rd->held && !rd->held[r] ? 1 : rd->mode;
}

/* x ← ca·x + cd·d on row r: the plain step (1, −α·s) or the row factors (m·a, −α·s·m; m·a absent: a = 1). */
static inline void NAME(row_coeffs)(const NAME(row_data) *rd, int64_t r, T step, T plain_a, T *ca, T *cd) {
    if (NAME(row_mode)(rd, r) == 2) {
        const T m = rd->fm[r];
        *ca = rd->fa ? rd->fa[r] : m;
        *cd = step * m;
    } else {
        *ca = plain_a;
        *cd = step;
    }
}

static inline void NAME(store_sums)(const NAME(row_data) *rd, int64_t r, double sxx, double sxd, double sdd) {
    if (rd->sums) {
        rd->sums[3 * r] = sxx;
        rd->sums[3 * r + 1] = sxd;
        rd->sums[3 * r + 2] = sdd;
    }
}

typedef struct {
    int64_t width;
    T *x, *g, *b;  /* parameter, gradient, momentum buffer (NULL: none) */
    NAME(row_data) rd;
    T mu, damp1, wdd, wd, lr;  /* μ, 1−τ, wd·(1−τ), wd, α */
} NAME(sgd_args);

/* SGD (spec §5.1): with a buffer d = b ← (μb + (1−τ)∇f)·keep + wd(1−τ)·x (a fresh one, zeros: μ = 0, τ = 0), without
 * d = ∇f·keep + wd·x (the gradient row is zeroed in place where keep is 0, for a later update). */
static void NAME(sgd_range)(const void *p, int64_t r0, int64_t r1) {
    const NAME(sgd_args) *a = p;
    const int64_t w = a->width;
    const NAME(row_data) *rd = &a->rd;
    for (int64_t r = r0; r < r1; ++r) {
        T *restrict x = a->x + r * w, *restrict g = a->g + r * w;
        const T kr = rd->keep ? rd->keep[r] : (T)1;
        T ca, cd;
        NAME(row_coeffs)(rd, r, -a->lr, (T)1, &ca, &cd);
        double sxx = 0, sxd = 0, sdd = 0;
        if (a->b) {
            T *restrict b = a->b + r * w;
            const T mu = a->mu, damp1 = a->damp1, wdd = a->wdd;
            if (NAME(row_mode)(rd, r)) {
                ROW_LOOP(T, w, {
                    const T xi = x[i], d = (mu * b[i] + damp1 * g[i]) * kr + wdd * xi;
                    b[i] = d;
                    bxx += xi * xi; bxd += xi * d; bdd += d * d;
                    x[i] = ca * xi + cd * d;
                })
            } else {
                ROW_LOOP(T, w, {
                    const T xi = x[i], d = (mu * b[i] + damp1 * g[i]) * kr + wdd * xi;
                    b[i] = d;
                    bxx += xi * xi; bxd += xi * d; bdd += d * d;
                })
            }
        } else {
            const T wd = a->wd;
            if (kr != (T)1) {
                for (int64_t i = 0; i < w; ++i) g[i] *= kr;
            }
            if (NAME(row_mode)(rd, r)) {
                ROW_LOOP(T, w, {
                    const T xi = x[i], d = g[i] + wd * xi;
                    bxx += xi * xi; bxd += xi * d; bdd += d * d;
                    x[i] = ca * xi + cd * d;
                })
            } else {
                ROW_LOOP(T, w, {
                    const T xi = x[i], d = g[i] + wd * xi;
                    bxx += xi * xi; bxd += xi * d; bdd += d * d;
                })
            }
        }
        NAME(store_sums)(rd, r, sxx, sxd, sdd);
    }
}

int64_t NAME(otov3_sgd)(int64_t n, const int64_t *meta, T **xs, T **gs, T **bs, const T *keep, double *sums,
                        const T *fa, const T *fm, const uint8_t *held, double mu, double dampening, double wd,
                        double lr, int64_t threads) {
    NAME(sgd_args) *a = malloc((size_t)(n > 0 ? n : 1) * sizeof *a);
    if (!a) return OUT_OF_MEMORY;
    for (int64_t t = 0; t < n; ++t) {
        const int64_t *mt = meta + 4 * t;
        const int fresh = (mt[3] >> 1) & 1;
        a[t] = (NAME(sgd_args)){mt[1], xs[t], gs[t], bs ? bs[t] : NULL,
                                NAME(row_data_of)(mt, keep, sums, fa, fm, held), fresh ? (T)0 : (T)mu,
                                fresh ? (T)1 : (T)(1 - dampening), fresh ? (T)wd : (T)(wd * (1 - dampening)), (T)wd,
                                (T)lr};
    }
    run_batch(NAME(sgd_range), a, sizeof *a, n, meta, threads);
    free(a);
    return 0;
}

typedef struct {
    int64_t width;
    T *x, *g, *m, *v, *u;  /* parameter, gradient, moments, where u waits for a later update (NULL: none) */
    NAME(row_data) rd;
    T b1c, b2, b2c, eps, floor, wd, decay, step;  /* 1−β1, β2, 1−β2, eps·sqrt(1−β2^t), the sqrt floor, coupled
                                                     wd, AdamW's 1−α·wd, −α·σ */
} NAME(adam_args);

/* Adam/AdamW (spec §5.1): g' = (∇f + wd·x)·keep, m ← m + (1−β1)(g' − m), v ← β2 v + (1−β2) g'²,
 * u = m / (sqrt(max(v, floor)) + eps), the reductions of (x, u); then u waits in `u`, or x ← A·x + C·u. */
static void NAME(adam_range)(const void *p, int64_t r0, int64_t r1) {
    const NAME(adam_args) *a = p;
    const int64_t w = a->width;
    const NAME(row_data) *rd = &a->rd;
    const T b1c = a->b1c, b2 = a->b2, b2c = a->b2c, eps = a->eps, fl = a->floor, wd = a->wd;
    for (int64_t r = r0; r < r1; ++r) {
        T *restrict x = a->x + r * w, *restrict g = a->g + r * w;
        T *restrict m = a->m + r * w, *restrict v = a->v + r * w;
        const T kr = rd->keep ? rd->keep[r] : (T)1;
        T ca, cd;
        NAME(row_coeffs)(rd, r, a->step, a->decay, &ca, &cd);
        double sxx = 0, sxd = 0, sdd = 0;
        if (!NAME(row_mode)(rd, r)) {
            T *restrict u = a->u + r * w;
            ROW_LOOP(T, w, {
                const T xi = x[i], gi = (g[i] + wd * xi) * kr;
                const T mi = m[i] + b1c * (gi - m[i]), vi = b2 * v[i] + b2c * (gi * gi);
                m[i] = mi; v[i] = vi;
                const T ui = mi / (sqrt(vi > fl ? vi : fl) + eps);
                u[i] = ui;
                bxx += xi * xi; bxd += xi * ui; bdd += ui * ui;
            })
        } else {
            ROW_LOOP(T, w, {
                const T xi = x[i], gi = (g[i] + wd * xi) * kr;
                const T mi = m[i] + b1c * (gi - m[i]), vi = b2 * v[i] + b2c * (gi * gi);
                m[i] = mi; v[i] = vi;
                const T ui = mi / (sqrt(vi > fl ? vi : fl) + eps);
                bxx += xi * xi; bxd += xi * ui; bdd += ui * ui;
                x[i] = ca * xi + cd * ui;
            })
        }
        NAME(store_sums)(rd, r, sxx, sxd, sdd);
    }
}

/* dmeta[3t..3t+2]: eps·sqrt(1−β2^t), the sqrt floor and −α·σ of tensor t (Adam's step counts are per tensor). */
int64_t NAME(otov3_adam)(int64_t n, const int64_t *meta, const double *dmeta, T **xs, T **gs, T **ms, T **vs,
                         T **us, const T *keep, double *sums, const T *fa, const T *fm, const uint8_t *held,
                         double beta1, double beta2, double wd, double decay, int64_t threads) {
    NAME(adam_args) *a = malloc((size_t)(n > 0 ? n : 1) * sizeof *a);
    if (!a) return OUT_OF_MEMORY;
    for (int64_t t = 0; t < n; ++t) {
        const int64_t *mt = meta + 4 * t;
        const double *dt = dmeta + 3 * t;
        a[t] = (NAME(adam_args)){mt[1], xs[t], gs[t], ms[t], vs[t], us ? us[t] : NULL,
                                 NAME(row_data_of)(mt, keep, sums, fa, fm, held), (T)(1 - beta1), (T)beta2,
                                 (T)(1 - beta2), (T)dt[0], (T)dt[1], (T)wd, (T)decay, (T)dt[2]};
        if (!a[t].rd.mode && !a[t].u) {
            free(a);
            return -1 - t; /* nowhere to keep u */
        }
    }
    run_batch(NAME(adam_range), a, sizeof *a, n, meta, threads);
    free(a);
    return 0;
}

typedef struct {
    int64_t width;
    T *x;
    const T *src;
    const T *fa, *fm;  /* m·a and m of the tensor's rows */
    const uint8_t *held;  /* the rows that waited (NULL: all) */
    T step, adj;       /* −α·σ; α·wd of a coupled decay still owed by d = src + wd·x (SGD without momentum) */
} NAME(finish_args);

/* The later update x ← (m·a − adj·m)·x + step·m·src, row by row. */
static void NAME(finish_range)(const void *p, int64_t r0, int64_t r1) {
    const NAME(finish_args) *a = p;
    const int64_t w = a->width;
    for (int64_t r = r0; r < r1; ++r) {
        if (a->held && !a->held[r]) continue;
        T *restrict x = a->x + r * w;
        const T *restrict s = a->src + r * w;
        const T fm = a->fm[r];
        const T ca = a->fa[r] - a->adj * fm, cd = a->step * fm;
        if (w < NARROW) {
            for (int64_t i = 0; i < w; ++i) x[i] = ca * x[i] + cd * s[i];
        } else {
#pragma omp simd
            for (int64_t i = 0; i < w; ++i) x[i] = ca * x[i] + cd * s[i];
        }
    }
}

/* dmeta[2t], dmeta[2t+1]: step and adj of tensor t. Every tensor must be owned (meta[4t+2] >= 0). */
int64_t NAME(otov3_finish)(int64_t n, const int64_t *meta, const double *dmeta, T **xs, T **srcs, const T *fa,
                           const T *fm, const uint8_t *held, int64_t threads) {
    NAME(finish_args) *a = malloc((size_t)(n > 0 ? n : 1) * sizeof *a);
    if (!a) return OUT_OF_MEMORY;
    for (int64_t t = 0; t < n; ++t) {
        const int64_t *mt = meta + 4 * t;
        if (mt[2] < 0) {
            free(a);
            return -1 - t;
        }
        a[t] = (NAME(finish_args)){mt[1], xs[t], srcs[t], fa + mt[2], fm + mt[2], held ? held + mt[2] : NULL,
                                   (T)dmeta[2 * t], (T)dmeta[2 * t + 1]};
    }
    run_batch(NAME(finish_range), a, sizeof *a, n, meta, threads);
    free(a);
    return 0;
}

typedef struct {
    const T *p;
    uint8_t *bad;
} NAME(check_args);

/* Flags the tensor when scalars [r0, r1) hold a NaN or Inf (0·x is 0 for finite x, NaN otherwise). */
static void NAME(check_range)(const void *p, int64_t r0, int64_t r1) {
    const NAME(check_args) *a = p;
    const T *restrict v = a->p;
    T acc = 0;
#pragma omp simd reduction(+:acc)
    for (int64_t i = r0; i < r1; ++i) acc += v[i] * (T)0;
    if (acc != acc) __atomic_store_n(a->bad, 1, __ATOMIC_RELAXED);
}

/* The index of the first tensor holding a NaN or Inf, or -1: one read of each (meta: size, 1, -1, 0 per tensor). */
int64_t NAME(otov3_first_nonfinite)(int64_t n, T **ptrs, const int64_t *meta, int64_t threads) {
    NAME(check_args) *a = calloc((size_t)(n > 0 ? n : 1), sizeof *a);
    uint8_t *bad = calloc((size_t)(n > 0 ? n : 1), 1);
    if (!a || !bad) {
        free(a);
        free(bad);
        return OUT_OF_MEMORY;
    }
    for (int64_t t = 0; t < n; ++t) a[t] = (NAME(check_args)){ptrs[t], bad + t};
    run_batch(NAME(check_range), a, sizeof *a, n, meta, threads);
    int64_t first = -1;
    for (int64_t t = 0; t < n && first < 0; ++t)
        if (bad[t]) first = t;
    free(a);
    free(bad);
    return first;
}

/* Per-row factors of a decision (`RowOps._row_factors`): row r of group g (g == n_groups: no group) gets
 * m_r = m_g (1 without a group or without m) and m_r·a_r with a_r = keep_r − alpha_r·c_g (c absent: 0). */
int64_t NAME(otov3_row_factors)(int64_t n_rows, const int64_t *row_group, int64_t n_groups, const double *c,
                                const double *m, const double *alpha, const double *keep, T *out_m, T *out_ma) {
    for (int64_t r = 0; r < n_rows; ++r) {
        const int64_t g = row_group[r];
        const int own = g >= 0 && g < n_groups;
        const double mr = own && m ? m[g] : 1.0;
        out_m[r] = (T)mr;
        if (out_ma) out_ma[r] = (T)(mr * (keep[r] - alpha[r] * (own && c ? c[g] : 0.0)));
    }
    return 0;
}
