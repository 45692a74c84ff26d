/* vec.c - see vec.h. */
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "vec.h"

#define LANES 16

/* Vector types for the loops GCC does not vectorise on its own (reductions
 * with a max, several results per pass): lane l of an accumulator takes
 * elements l, l + 8, ..., so results do not depend on the clone. */
typedef double v4d __attribute__((vector_size(32)));
typedef float v8f __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));
typedef double v8d __attribute__((vector_size(64)));
typedef long long v8l __attribute__((vector_size(64)));
typedef float v16f __attribute__((vector_size(64)));
typedef int v16i __attribute__((vector_size(64)));
typedef unsigned v16u __attribute__((vector_size(64)));

#define LOAD8(p) ({ v8f v_; memcpy(&v_, (p), sizeof v_); v_; })
#define LOAD16(p) ({ v16f v_; memcpy(&v_, (p), sizeof v_); v_; })
#define LOAD4D(p) ((v4d){(p)[0], (p)[1], (p)[2], (p)[3]})

/* m = max(m, v) lane by lane (lanes of type int_vec), keeping m where v is
 * NaN. Macros rather than functions: vector arguments would change the ABI
 * between clones. */
#define MAX_LANES(m, v, int_vec)                                                                   \
    do {                                                                                           \
        int_vec more_ = (v) > (m);                                                                 \
        (m) = (__typeof__(m))(((int_vec)(v) & more_) | ((int_vec)(m) & ~more_));                   \
    } while (0)

/* v[0] = the largest lane of v (no NaN lanes), in three shuffle steps */
#define HMAX8F(v)                                                                                  \
    do {                                                                                           \
        v8f w_ = __builtin_shufflevector((v), (v), 4, 5, 6, 7, 0, 1, 2, 3);                        \
        MAX_LANES((v), w_, v8i);                                                                   \
        w_ = __builtin_shufflevector((v), (v), 2, 3, 0, 1, 6, 7, 4, 5);                            \
        MAX_LANES((v), w_, v8i);                                                                   \
        w_ = __builtin_shufflevector((v), (v), 1, 0, 3, 2, 5, 4, 7, 6);                            \
        MAX_LANES((v), w_, v8i);                                                                   \
    } while (0)

CLONES float vec_dot(const float *a, const float *b, int n)
{
    float acc[LANES] = {0};
    int j = 0;
    for (; j + LANES <= n; j += LANES)
        for (int q = 0; q < LANES; q++)
            acc[q] += a[j + q] * b[j + q];
    float s = 0.0f;
    for (int q = 0; q < LANES; q++)
        s += acc[q];
    for (; j < n; j++)
        s += a[j] * b[j];
    return s;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
/* A slice of 32 floats from src to a 64-byte aligned dst, past the caches
 * (vec_slice_sums; only called where AVX-512 is). */
__attribute__((target("avx512f"))) static inline void stream_slice(float *dst, const float *src)
{
    _mm512_stream_ps(dst, _mm512_loadu_ps(src));
    _mm512_stream_ps(dst + 16, _mm512_loadu_ps(src + 16));
}

static bool can_stream(void)
{
    static int ok = -1;
    if (ok < 0)
        ok = __builtin_cpu_supports("avx512f");
    return ok;
}

void vec_stream_fence(void)
{
    if (can_stream())
        _mm_sfence();
}
#else
static void stream_slice(float *dst, const float *src)
{
    memcpy(dst, src, VEC_SLICE * sizeof *dst);
}

static bool can_stream(void)
{
    return false;
}

void vec_stream_fence(void) {}
#endif

CLONES512 void vec_slice_sums(const int32_t *rows, const float *fa, const float *fb, int64_t n,
                              const float *A, const float *B, size_t ld, int w, int add,
                              float *sa, float *sb)
{
    if (w == VEC_SLICE) { /* two vectors of 16 per sum, in registers */
        v16f a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};
        if (add) {
            a0 = LOAD16(sa), a1 = LOAD16(sa + 16), b0 = LOAD16(sb), b1 = LOAD16(sb + 16);
        }
        for (int64_t q = 0; q < n; q++) {
            const float *ra = A + (size_t)rows[q] * ld, *rb = B + (size_t)rows[q] * ld;
            a0 += fa[q] * LOAD16(ra);
            a1 += fa[q] * LOAD16(ra + 16);
            b0 += fb[q] * LOAD16(rb);
            b1 += fb[q] * LOAD16(rb + 16);
        }
        /* A slice of a gradient row is written once here and read next by
         * another pass: a plain store would first read its lines from memory
         * (latent gradients 28 -> 23 ms per step streamed). */
        float out[2 * VEC_SLICE];
        memcpy(out, &a0, sizeof a0);
        memcpy(out + 16, &a1, sizeof a1);
        memcpy(out + 32, &b0, sizeof b0);
        memcpy(out + 48, &b1, sizeof b1);
        if (!add && can_stream() && !(((uintptr_t)sa | (uintptr_t)sb) & 63)) {
            stream_slice(sa, out);
            stream_slice(sb, out + VEC_SLICE);
        } else {
            memcpy(sa, out, VEC_SLICE * sizeof *sa);
            memcpy(sb, out + VEC_SLICE, VEC_SLICE * sizeof *sb);
        }
        return;
    }
    float a[VEC_SLICE], b[VEC_SLICE];
    for (int c = 0; c < w; c++) {
        a[c] = add ? sa[c] : 0.0f;
        b[c] = add ? sb[c] : 0.0f;
    }
    for (int64_t q = 0; q < n; q++) {
        const float *ra = A + (size_t)rows[q] * ld, *rb = B + (size_t)rows[q] * ld;
        for (int c = 0; c < w; c++) {
            a[c] += fa[q] * ra[c];
            b[c] += fb[q] * rb[c];
        }
    }
    memcpy(sa, a, (size_t)w * sizeof *sa);
    memcpy(sb, b, (size_t)w * sizeof *sb);
}

CLONES void vec_axpy(float alpha, const float *x, float *y, int n)
{
    for (int j = 0; j < n; j++)
        y[j] += alpha * x[j];
}

/* The 16 lanes with their neighbours 8, 4, 2 and 1 apart swapped: the four
 * steps of a tree over the lanes (HMAX16F, LANE_BITS16). */
#define SWAP16_8(v) \
    __builtin_shufflevector((v), (v), 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7)
#define SWAP16_4(v) \
    __builtin_shufflevector((v), (v), 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11)
#define SWAP16_2(v) \
    __builtin_shufflevector((v), (v), 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13)
#define SWAP16_1(v) \
    __builtin_shufflevector((v), (v), 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14)

/* v[0] = the largest lane of v (no NaN lanes), in four shuffle steps */
#define HMAX16F(v)                                                                                 \
    do {                                                                                           \
        MAX_LANES((v), SWAP16_8(v), v16i);                                                         \
        MAX_LANES((v), SWAP16_4(v), v16i);                                                         \
        MAX_LANES((v), SWAP16_2(v), v16i);                                                         \
        MAX_LANES((v), SWAP16_1(v), v16i);                                                         \
    } while (0)

/* key = (a - mean) rstd + logit(u) for the 16 lanes at a and raw
 * (vec_logistic_key). The logit is ln 2 (log2 u - log2(1 - u)), each log2
 * read off the float's bits: x = 2^e (1 + f), read as an integer, is
 * 2^23 (e + 127 + f), and f stands in for log2(1 + f), short of it by 0 to
 * 0.0861. The difference is off by at most 0.0861 ln 2 = 0.0597 (vec.h's
 * KEY_MARGIN_ABS). Four operations in place of a division and a polynomial
 * (the key pass ran 2.4x longer with them); the wider margin lets a few more
 * latents through to the exact score, which decides. */
#define LOGISTIC_KEY16(a, raw, mean, rstd, noise)                                                  \
    ({                                                                                             \
        v16f k_ = ((a) - (mean)) * (rstd);                                                         \
        if (noise) {                                                                               \
            const v16f u_ =                                                                        \
                (__builtin_convertvector((v16i)((raw) >> 8), v16f) + 0.5f) * 0x1p-24f;             \
            const v16f log2_diff_ = __builtin_convertvector((v16i)u_, v16f) -                      \
                                    __builtin_convertvector((v16i)(1.0f - u_), v16f);              \
            k_ += log2_diff_ * (0x1p-23f * 0.693147181f);                                          \
        }                                                                                          \
        k_;                                                                                        \
    })

/* The key is a bound compared with a margin, not a result: let GCC fuse its
 * multiplies and adds (-std=c11 turns that off everywhere else). */
#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")

/* One step of the key pass over the 16 latents at z, bias and bits (NULL: no
 * noise): the keys k and |a|, and with bounds the score's lower and upper
 * bounds (vec.h's ptopk_bounds). A function for its several results; always
 * inlined, so its vectors stay in registers. */
static inline __attribute__((always_inline)) void key_step16(const float *z, const float *bias,
                                                             const uint32_t *bits, float mean,
                                                             float rstd, const ptopk_bounds *bd,
                                                             v16f *k, v16f *aa, v16f *lb,
                                                             v16f *ub)
{
    const v16i abs_mask = (v16i){0} + 0x7fffffff;
    const v16f a = LOAD16(z) + LOAD16(bias);
    v16u raw = {0};
    if (bits)
        memcpy(&raw, bits, sizeof raw);
    *k = LOGISTIC_KEY16(a, raw, mean, rstd, bits);
    *aa = (v16f)((v16i)a & abs_mask);
    if (bd) {
        const v16f margin =
            (float)KEY_MARGIN_ABS + (float)KEY_MARGIN_REL * (v16f)((v16i)*k & abs_mask);
        const v16i one = (v16i)((v16f){0} + 1.0f);
        const v16f base = bd->lambda * *aa;
        *lb = base + (v16f)(one & (*k - margin >= bd->saturated));
        *ub = base + (v16f)(one & ~(*k + margin <= bd->unsaturated));
    }
}

static inline __attribute__((always_inline)) void key_pass(const float *z, const float *bias,
                                                           float mean, float rstd,
                                                           const uint32_t *bits, int n,
                                                           int chunk, float *key, float *key_max,
                                                           float *absa_max,
                                                           const ptopk_bounds *bd)
{
    for (int c = 0, lo = 0; lo < n; c++, lo += chunk) {
        const int hi = lo + chunk < n ? lo + chunk : n;
        v16f km = (v16f){0} - INFINITY, am = {0}, lbm = km, ubm = km, k, aa, lb, ub;
        int i = lo;
        for (; i + 16 <= hi; i += 16) {
            key_step16(z + i, bias + i, bits ? bits + i : NULL, mean, rstd, bd, &k, &aa, &lb,
                       &ub);
            memcpy(key + i, &k, sizeof k);
            MAX_LANES(km, k, v16i);
            MAX_LANES(am, aa, v16i);
            if (bd) {
                MAX_LANES(lbm, lb, v16i);
                MAX_LANES(ubm, ub, v16i);
            }
        }
        HMAX16F(km);
        HMAX16F(am);
        float kmax = km[0], amax = am[0], lbmax = -INFINITY, ubmax = -INFINITY;
        if (bd) {
            HMAX16F(lbm);
            HMAX16F(ubm);
            lbmax = lbm[0], ubmax = ubm[0];
        }
        if (i < hi) { /* fewer than 16 left: through a padded copy */
            const int m = hi - i;
            float zp[16] = {0}, bp[16] = {0}, kp[16];
            uint32_t rp[16] = {0};
            memcpy(zp, z + i, (size_t)m * sizeof *zp);
            memcpy(bp, bias + i, (size_t)m * sizeof *bp);
            if (bits)
                memcpy(rp, bits + i, (size_t)m * sizeof *rp);
            key_step16(zp, bp, bits ? rp : NULL, mean, rstd, bd, &k, &aa, &lb, &ub);
            memcpy(kp, &k, sizeof k);
            memcpy(key + i, kp, (size_t)m * sizeof *kp);
            for (int l = 0; l < m; l++) {
                kmax = kp[l] > kmax ? kp[l] : kmax;
                amax = aa[l] > amax ? aa[l] : amax;
                if (bd) {
                    lbmax = lb[l] > lbmax ? lb[l] : lbmax;
                    ubmax = ub[l] > ubmax ? ub[l] : ubmax;
                }
            }
        }
        key_max[c] = kmax;
        absa_max[c] = amax;
        if (bd) {
            bd->lb_max[c] = lbmax;
            bd->ub_max[c] = ubmax;
        }
    }
}

CLONES512 void vec_logistic_key(const float *z, const float *bias, float mean, float rstd,
                                const uint32_t *bits, int n, int chunk, float *key,
                                float *key_max, float *absa_max, const ptopk_bounds *bounds)
{
    if (bounds)
        key_pass(z, bias, mean, rstd, bits, n, chunk, key, key_max, absa_max, bounds);
    else
        key_pass(z, bias, mean, rstd, bits, n, chunk, key, key_max, absa_max, NULL);
}
#pragma GCC pop_options

/* sum of d_i or of d_i^2, d_i = a_i - b_i (b NULL: a_i - shift), in double
 * over sixteen lanes, lane l taking elements l, l + 16, ...; lanes l and
 * l + 8 are added pairwise at the end. 32-byte vectors: GCC spilled 64-byte
 * ones to the stack in the AVX2 build (vec_sum_squares ran 6x slower than
 * vec_dot). */
static inline double lane_sum16(const float *a, const float *b, double shift, int square,
                                size_t n)
{
    v4d acc[4] = {{0}};
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int q = 0; q < 4; q++) {
            const v4d d = LOAD4D(a + i + 4 * q) - (b ? LOAD4D(b + i + 4 * q) : (v4d){0} + shift);
            acc[q] += square ? d * d : d;
        }
    double s = 0.0;
    for (int l = 0; l < 8; l++)
        s += acc[l / 4][l % 4] + acc[2 + l / 4][l % 4];
    for (; i < n; i++) {
        const double d = (double)a[i] - (b ? (double)b[i] : shift);
        s += square ? d * d : d;
    }
    return s;
}

CLONES double vec_sum(const float *x, size_t n)
{
    return lane_sum16(x, NULL, 0.0, 0, n);
}

CLONES double vec_sum_squares(const float *x, size_t n)
{
    return lane_sum16(x, NULL, 0.0, 1, n);
}

CLONES double vec_sum_sq_dev(const float *x, double shift, size_t n)
{
    return lane_sum16(x, NULL, shift, 1, n);
}

CLONES double vec_sum_sq_diff(const float *a, const float *b, size_t n)
{
    return lane_sum16(a, b, 0.0, 1, n);
}

CLONES void vec_shift_scale(const float *x, double shift, double scale, float *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = (float)((x[i] - shift) * scale);
}

CLONES512 void vec_sum_sq(const float *z, const float *bias, int n, double *sum, double *sq,
                          double *absmax)
{
    const v8l abs_mask = (v8l){0} + 0x7fffffffffffffffLL;
    v8d s = {0}, q = {0}, m = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        v8d a = __builtin_convertvector(LOAD8(z + i) + LOAD8(bias + i), v8d);
        v8d abs_a = (v8d)((v8l)a & abs_mask);
        s += a;
        q += a * a;
        MAX_LANES(m, abs_a, v8l);
    }
    double ts = 0.0, tq = 0.0, tm = 0.0;
    for (int l = 0; l < 8; l++) {
        ts += s[l];
        tq += q[l];
        tm = m[l] > tm ? m[l] : tm;
    }
    for (; i < n; i++) {
        double a = (double)(z[i] + bias[i]);
        ts += a;
        tq += a * a;
        tm = fabs(a) > tm ? fabs(a) : tm;
    }
    *sum = ts;
    *sq = tq;
    *absmax = tm;
}

CLONES512 void vec_ptopk_bound(const float *z, const float *bias, int n, int chunk, double mean,
                               double scale, double lambda, double *ub, double *chunk_max,
                               double *chunk_lb)
{
    for (int i = 0; i < n; i++) {
        double a = (double)(z[i] + bias[i]);
        double t = (a - mean) * scale, mag = lambda * fabs(a);
        double bound = t <= -40.0 ? mag + 4.3e-18 : 1.0 + mag;
        ub[i] = t < 40.0 ? -bound : bound;
    }
    /* per chunk, the largest |ub| and the largest lower bound: ub itself
     * where it is the score, else -ub - 1 (lambda |a|, or less) */
    const v8l abs_mask = (v8l){0} + 0x7fffffffffffffffLL;
    const v8d zero = {0};
    for (int c = 0; c * chunk < n; c++) {
        v8d up = zero, low = zero - INFINITY;
        int lo = c * chunk, hi = lo + chunk < n ? lo + chunk : n, i = lo;
        for (; i + 8 <= hi; i += 8) {
            v8d v;
            memcpy(&v, ub + i, sizeof v);
            v8l exact = v > zero;
            v8d abs_v = (v8d)((v8l)v & abs_mask), lb = (v8d)(((v8l)v & exact) |
                                                              ((v8l)(-v - 1.0) & ~exact));
            MAX_LANES(up, abs_v, v8l);
            MAX_LANES(low, lb, v8l);
        }
        double u = 0.0, l = -INFINITY;
        for (int q = 0; q < 8; q++) {
            u = up[q] > u ? up[q] : u;
            l = low[q] > l ? low[q] : l;
        }
        for (; i < hi; i++) {
            u = fabs(ub[i]) > u ? fabs(ub[i]) : u;
            double lb = ub[i] > 0.0 ? ub[i] : -ub[i] - 1.0;
            l = lb > l ? lb : l;
        }
        chunk_max[c] = u;
        chunk_lb[c] = l;
    }
}

/* A float's bits as an int32, a negative's magnitude bits flipped: ordered
 * as the floats are (-0 just below +0), and back. */
static inline int32_t ordered_bits(float x)
{
    int32_t i;
    memcpy(&i, &x, sizeof i);
    return i ^ ((i >> 31) & 0x7fffffff);
}

CLONES float vec_kth_largest(const float *v, int n, int k, int32_t *work)
{
    int32_t lo = INT32_MAX, hi = INT32_MIN;
    for (int i = 0; i < n; i++) {
        work[i] = ordered_bits(v[i]);
        lo = work[i] < lo ? work[i] : lo;
        hi = work[i] > hi ? work[i] : hi;
    }
    while (lo < hi) { /* count(work >= lo) >= k > count(work > hi) */
        const int32_t mid = (int32_t)(lo + ((int64_t)hi - lo + 1) / 2);
        int at_least = 0;
        for (int i = 0; i < n; i++)
            at_least += work[i] >= mid;
        if (at_least >= k)
            lo = mid;
        else
            hi = mid - 1;
    }
    const int32_t bits = lo ^ ((lo >> 31) & 0x7fffffff);
    float x;
    memcpy(&x, &bits, sizeof x);
    return x;
}

CLONES void vec_chunk_max(const float *z, const float *bias, int n, int chunk, float *chunk_max)
{
    for (int c = 0; c * chunk < n; c++) {
        int lo = c * chunk, hi = lo + chunk < n ? lo + chunk : n, i = lo;
        /* four running maxima: one would wait on its compare and blend (a
         * chain of about six cycles) every eight latents. NaNs never enter. */
        v8f lane[4];
        for (int q = 0; q < 4; q++)
            lane[q] = (v8f){0} - INFINITY;
        for (; i + 32 <= hi; i += 32)
            for (int q = 0; q < 4; q++) {
                const v8f a = LOAD8(z + i + 8 * q) + LOAD8(bias + i + 8 * q);
                MAX_LANES(lane[q], a, v8i);
            }
        for (; i + 8 <= hi; i += 8) {
            const v8f a = LOAD8(z + i) + LOAD8(bias + i);
            MAX_LANES(lane[0], a, v8i);
        }
        MAX_LANES(lane[0], lane[1], v8i);
        MAX_LANES(lane[2], lane[3], v8i);
        MAX_LANES(lane[0], lane[2], v8i);
        HMAX8F(lane[0]);
        float m = lane[0][0];
        for (; i < hi; i++)
            m = z[i] + bias[i] > m ? z[i] + bias[i] : m;
        chunk_max[c] = m;
    }
}

/* The 16 lanes of a comparison's result (-1 or 0 each) as bits of a word,
 * lane l in bit l: each lane keeps its own bit, then an OR tree of four
 * shuffles (extracting the lanes one by one costs 16 moves). */
#define LANE_BITS16(set)                                                                           \
    ({                                                                                             \
        v16i b_ = (set) & (v16i){1 << 0, 1 << 1, 1 << 2,  1 << 3,  1 << 4,  1 << 5,  1 << 6,      \
                                 1 << 7, 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12, 1 << 13,     \
                                 1 << 14, 1 << 15};                                               \
        b_ |= SWAP16_8(b_);                                                                        \
        b_ |= SWAP16_4(b_);                                                                        \
        b_ |= SWAP16_2(b_);                                                                        \
        b_ |= SWAP16_1(b_);                                                                        \
        (uint64_t)(uint32_t)b_[0];                                                                 \
    })

#define REACH_ABS ((float)(1.25 * KEY_MARGIN_ABS))
#define REACH_REL ((float)(1.5 * KEY_MARGIN_REL))

CLONES512 uint64_t vec_keys_reaching(const float *key, int n, float threshold)
{
    const v16i abs_mask = (v16i){0} + 0x7fffffff;
    uint64_t bits = 0;
    int j = 0;
    for (; j + 16 <= n; j += 16) {
        const v16f k = LOAD16(key + j);
        const v16f reach = k + REACH_ABS + REACH_REL * (v16f)((v16i)k & abs_mask);
        bits |= LANE_BITS16(reach >= threshold) << j;
    }
    for (; j < n; j++)
        bits |= (uint64_t)(key[j] + REACH_ABS + REACH_REL * fabsf(key[j]) >= threshold) << j;
    return bits;
}

CLONES512 uint64_t vec_absa_reaching(const float *z, const float *bias, int n, float threshold)
{
    const v16i abs_mask = (v16i){0} + 0x7fffffff;
    uint64_t bits = 0;
    int j = 0;
    for (; j + 16 <= n; j += 16) {
        const v16f aa = (v16f)((v16i)(LOAD16(z + j) + LOAD16(bias + j)) & abs_mask);
        bits |= LANE_BITS16(aa >= threshold) << j;
    }
    for (; j < n; j++)
        bits |= (uint64_t)(fabsf(z[j] + bias[j]) >= threshold) << j;
    return bits;
}
