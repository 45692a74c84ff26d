/* topk.cu - per-row top-k selection for topk and ptopk, one block per row.
 *
 * Contract (the CPU twins are topk_select / ptopk_select in src/sae/arch.c
 * with the heap of select.c): the k latents of largest score, ordered by
 * (score desc, index asc); among equal scores the lower index wins. topk
 * ranks s = z + b_enc (a float add, as the CPU); ptopk ranks, in double as the
 * CPU does,
 *     s = sigmoid((a - mean) * (rstd / beta)) + lambda |a|,   a = z + b_enc,
 * because with lambda = 1e-4 a float s loses |a| once the gate saturates.
 * ptopk in training (SAE_K_SEL_PTOPK_TRAIN, the CPU's ptopk_train_row in
 * src/sae/train.c) adds logistic noise g = log u - log(1 - u), u from the
 * Philox word of (seed, latent, row, step) that sae_philox_fill draws, and
 * ranks s = sigmoid(((a - mean) * rstd + g) / beta) + lambda |a|.
 *
 * Every score is mapped to an unsigned key with the same order (keys below),
 * so "largest score" is "largest key". A row runs through:
 *
 *   0. ptopk with layernorm: mean and variance of a over the row (double);
 *      in training also the row's largest |a|.
 *   1. bound: each thread takes the max lower float key (fkeys) over its own
 *      latents; the k-th largest of those SEL_THREADS maxima (a radix select
 *      in shared memory) is a key L that at least k latents reach, so L <=
 *      the row's k-th largest key. In training a thread's lower bound comes
 *      from fast keys (train_key) over a quarter of its latents.
 *   2. gather: the latents whose upper float key is >= L are the candidates
 *      (inference's ptopk lowers L by its float key's error bound instead;
 *      training compares its fast keys with the gate's argument that L asks
 *      for, train_reach), so no latent of the exact top-k is missed. Their a
 *      and noise bits go to shared memory. Typically there are k to 4k.
 *   3. the candidates' exact keys (the double score for ptopk), a thread
 *      each; sort them by (exact key desc, index asc) with a bitonic sort and
 *      write the first k.
 * Two passes over the row (three for ptopk with layernorm or in training),
 * read from L2 after the first, and no [B, M] scratch.
 *
 * When more than SEL_CAP latents pass the bound (many exact ties, e.g. a zero
 * row; saturated gates with lambda_mag = 0), the slow path finds the exact
 * k-th largest key with an 8-bit-digit radix select over the row (4 passes
 * for topk's 32-bit keys, 8 for ptopk's 64-bit ones), then keeps the keys
 * above it plus the lowest-index ties in one index-ordered pass. Correct for
 * any input; slower. */
#include "launch.cuh"

#include <stdint.h>

#include <Random123/philox.h>

#include "kernels.h"

#define SEL_THREADS 512
#define SEL_WARPS (SEL_THREADS / 32)
#define SEL_CAP 2048            /* candidates held in shared memory; a power of 2 >= SAE_K_TOPK_MAX */

/* The float key of ptopk is within REL * s + ABS of the double score s.
 * Derivation: a is the same float as the CPU's; t = (a - mean) rstd / beta
 * is formed in double and rounded once to float; expf is within 2 ulp; the
 * add, divide, multiply and add of the gate and score round once each. That
 * bounds |s_f - s| by 4.2e-7 s + 1.3e-8 (the t rounding adds at most
 * g(1 - g)|t| 2^-24 <= 1.3e-8). The margins below are 2x and 7x that. */
#define PTOPK_REL 1e-6
#define PTOPK_ABS 1e-7

#if SAE_K_TOPK_MAX > SEL_CAP
#error "SEL_CAP must hold k candidates"
#endif

/* ---- order-preserving keys ------------------------------------------------
 * Flip all bits of negatives, set the sign bit of positives: unsigned order
 * is then float order. -0 is made +0 (the CPU's double compare says they are
 * equal, so they must tie), and NaN ranks below everything. */
static __device__ __forceinline__ uint32_t key32(float f)
{
    uint32_t u = __float_as_uint(f);
    if (f != f)
        return 0u;
    if ((u << 1) == 0u)
        u = 0u;
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static __device__ __forceinline__ float unkey32(uint32_t k)
{
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

static __device__ __forceinline__ uint64_t key64(double f)
{
    uint64_t u = (uint64_t)__double_as_longlong(f);
    if (f != f)
        return 0ull;
    if ((u << 1) == 0ull)
        u = 0ull;
    return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

/* ---- one row -------------------------------------------------------------- */
struct Row {
    const float *z;             /* this row of z [M] */
    const float *b;             /* b_enc [M] */
    int M;
    double mean, rstd;          /* ptopk layernorm (0 and 1 without) */
    double t_scale;             /* rstd / beta, as the CPU */
    double beta;
    double lambda;
    float lambda_f;
    float mean_f, rstd_f;       /* PTOPK_TRAIN's fast keys (train_key) */
    float key_abs;              /* their margin's constant part */
    float reach, a_reach;       /* PTOPK_TRAIN: train_candidate's bounds */
    bool noise;                 /* PTOPK_TRAIN: logistic noise from Philox */
    philox4x32_key_t key;       /* the run's seed */
    uint32_t row;               /* the row within the training batch */
    uint64_t step;
};

/* The four Philox words of latents 4 g .. 4 g + 3 (sae_philox_fill's draw for
 * row r.row at step r.step); zeros when the row has no noise. */
static __device__ __forceinline__ philox4x32_ctr_t noise_block(const Row &r, int g)
{
    philox4x32_ctr_t c = {{0u, 0u, 0u, 0u}};
    if (!r.noise)
        return c;
    c.v[0] = (uint32_t)g;
    c.v[1] = r.row;
    c.v[2] = (uint32_t)r.step;
    c.v[3] = (uint32_t)(r.step >> 32);
    return philox4x32(c, r.key);
}

/* u in (0, 1] from 32 random bits, rounded in float as train.c's unit_uniform */
static __device__ __forceinline__ double unit_uniform(uint32_t bits)
{
    return (double)(((float)(bits >> 8) + 0.5f) * 5.9604644775390625e-8f);
}

/* t, the gate's argument, in the CPU's order; _rn stops FMA fusion.
 *   PTOPK:       (a - mean) * (rstd / beta)
 *   PTOPK_TRAIN: ((a - mean) * rstd + g) / beta, g = log u - log(1 - u) */
template <int KIND>
static __device__ __forceinline__ double ptopk_t(const Row &r, float a, uint32_t bits)
{
    if (KIND == SAE_K_SEL_PTOPK)
        return __dmul_rn((double)a - r.mean, r.t_scale);
    double g = 0.0;
    if (r.noise) {
        const double u = unit_uniform(bits);
        g = __dsub_rn(log(u), log(1.0 - u));
    }
    return __ddiv_rn(__dadd_rn(__dmul_rn((double)a - r.mean, r.rstd), g), r.beta);
}

/* Float keys for the bound and the filter: lower <= the exact score's key <=
 * upper, in the order of the exact score.
 *   topk:  exact (lower = upper).
 *   ptopk: one key from t rounded to float; the caller lowers the bound by
 *          PTOPK_REL and PTOPK_ABS instead.
 * (ptopk in training uses train_key below.) */
struct KeyPair {
    uint32_t lower, upper;
};

template <int KIND>
static __device__ __forceinline__ KeyPair fkeys(const Row &r, float z, float b, uint32_t bits)
{
    const float a = __fadd_rn(z, b);
    if (KIND == SAE_K_SEL_TOPK)
        return {key32(a), key32(a)};
    const float g = 1.0f / (1.0f + expf(-(float)ptopk_t<KIND>(r, a, bits)));
    const uint32_t k = key32(g + r.lambda_f * fabsf(a));
    return {k, k};
}

/* ptopk in training: a fast key for x = l + g, l = (a - mean) rstd, within
 * margin of it, for pruning only (candidates get the exact score). The logit
 * g = ln 2 (log2 p - log2 q), p = u 2^24 and q = (1 - u) 2^24, reads each log2
 * off the float's bits: y = 2^e (1 + f) read as an integer is 2^23 (e + 127 +
 * f), and f falls short of log2(1 + f) by 0 to 0.0861, so the difference of
 * two is within 0.0861 (0.0597 after ln 2). The difference is shifted down by
 * 6 bits (|p - q| < 25 2^23 must fit the 2^22 of the magic-number conversion;
 * 5.3e-6 more) and made a float by adding it to 1.5 2^23's bits. No logs, no
 * divisions, one conversion: Philox and this run for every latent of every
 * row (a quarter of them twice). The margin, as the CPU's (vec.h's
 * KEY_MARGIN_*): 0.0625, plus twice l's roundings: 2^-24 of rstd |mean| for
 * the float mean (in key_abs), and 1e-6 of |l| + |key| for the operations. */
struct TrainKey {
    float key, margin, a;
};

static __device__ __forceinline__ TrainKey train_key(const Row &r, float z, float b, uint32_t bits)
{
    const float a = __fadd_rn(z, b);
    const float l = __fmul_rn(__fsub_rn(a, r.mean_f), r.rstd_f);
    float key = l;
    if (r.noise) {
        const float p = __fadd_rn((float)(bits >> 8), 0.5f), q = __fsub_rn(16777216.0f, p);
        const int d = (__float_as_int(p) - __float_as_int(q)) >> 6;
        const float log2_diff = __fsub_rn(__int_as_float(0x4b400000 + d), 12582912.0f);
        key = __fmaf_rn(log2_diff, 0.693147181f * 0x1p-17f, l);
    }
    return {key, __fmaf_rn(1e-6f, fabsf(l) + fabsf(key), r.key_abs), a};
}

/* Could the latent reach the bound (Row's reach and a_reach)? Written so a
 * NaN key or a stays in (the slow path's all-pass bounds must pass all). */
static __device__ __forceinline__ bool train_candidate(const Row &r, const TrainKey &t)
{
    return !(t.key + t.margin < r.reach) && !(fabsf(t.a) < r.a_reach);
}

/* The exact key: the CPU's score. */
template <int KIND>
static __device__ __forceinline__ uint64_t xkey(const Row &r, float a, uint32_t bits)
{
    if (KIND == SAE_K_SEL_TOPK)
        return (uint64_t)key32(a);
    const double gate = 1.0 / (1.0 + exp(-ptopk_t<KIND>(r, a, bits)));
    return key64(__dadd_rn(gate, __dmul_rn(r.lambda, fabs((double)a))));
}

/* Calls f(i, z[i], b[i], bits[i]) for this thread's latents: 16-byte loads,
 * and one Philox block per four latents, when the row allows them. Which
 * latents a thread gets does not matter to any caller (the bound needs
 * disjoint sets, the gather any order). every > 1 visits only each every-th
 * of the thread's groups (a bound may come from a sample). */
template <typename F>
static __device__ __forceinline__ void for_each(const Row &r, F f, int every = 1)
{
    if ((r.M & 3) == 0 && (((uintptr_t)r.z | (uintptr_t)r.b) & 15) == 0) {
        const float4 *z4 = (const float4 *)r.z, *b4 = (const float4 *)r.b;
        for (int j = threadIdx.x; j < r.M / 4; j += SEL_THREADS * every) {
            const float4 zv = z4[j], bv = __ldg(b4 + j);
            const philox4x32_ctr_t n = noise_block(r, j);
            f(4 * j, zv.x, bv.x, n.v[0]);
            f(4 * j + 1, zv.y, bv.y, n.v[1]);
            f(4 * j + 2, zv.z, bv.z, n.v[2]);
            f(4 * j + 3, zv.w, bv.w, n.v[3]);
        }
    } else {
        for (int i = threadIdx.x; i < r.M; i += SEL_THREADS * every)
            f(i, r.z[i], __ldg(r.b + i), noise_block(r, i >> 2).v[i & 3]);
    }
}

/* As for_each, but every thread runs the same number of iterations (past the
 * end with ok = false), so f may use full-warp ballots and shuffles. */
template <typename F>
static __device__ __forceinline__ void for_each_uniform(const Row &r, F f)
{
    if ((r.M & 3) == 0 && (((uintptr_t)r.z | (uintptr_t)r.b) & 15) == 0) {
        const float4 *z4 = (const float4 *)r.z, *b4 = (const float4 *)r.b;
        const int n4 = r.M / 4;
        for (int base = 0; base < n4; base += SEL_THREADS) {
            const int j = base + threadIdx.x;
            const bool ok = j < n4;
            float4 zv = make_float4(0.0f, 0.0f, 0.0f, 0.0f), bv = zv;
            philox4x32_ctr_t n = {{0u, 0u, 0u, 0u}};
            if (ok) {
                zv = z4[j];
                bv = __ldg(b4 + j);
                n = noise_block(r, j);
            }
            f(4 * j, zv.x, bv.x, n.v[0], ok);
            f(4 * j + 1, zv.y, bv.y, n.v[1], ok);
            f(4 * j + 2, zv.z, bv.z, n.v[2], ok);
            f(4 * j + 3, zv.w, bv.w, n.v[3], ok);
        }
    } else {
        for (int base = 0; base < r.M; base += SEL_THREADS) {
            const int i = base + threadIdx.x;
            const bool ok = i < r.M;
            f(i, ok ? r.z[i] : 0.0f, ok ? __ldg(r.b + i) : 0.0f,
              ok ? noise_block(r, i >> 2).v[i & 3] : 0u, ok);
        }
    }
}

/* ---- block helpers -------------------------------------------------------- */
struct Shared {
    uint64_t key[SEL_CAP];      /* candidates, then winners */
    int32_t idx[SEL_CAP];
    uint32_t tmax[SEL_THREADS]; /* per-thread maxima of the float key */
    uint32_t hist[256];
    double red[SEL_WARPS];
    int warp_total[SEL_WARPS];
    int count;                  /* candidates gathered / keys above the k-th */
    int digit, above;           /* find_digit's answer */
};

/* op over the block's v (every thread gets the result): a warp tree, then the
 * warps' results in order. T is double or float (sh.red holds either). */
template <typename T, typename Op>
static __device__ T block_reduce(T v, Shared &sh, Op op)
{
    for (int o = 16; o > 0; o >>= 1)
        v = op(v, __shfl_down_sync(0xffffffffu, v, o));
    __syncthreads();
    if ((threadIdx.x & 31) == 0)
        sh.red[threadIdx.x >> 5] = v;
    __syncthreads();
    T r = (T)sh.red[0];
    for (int w = 1; w < SEL_WARPS; w++)
        r = op(r, (T)sh.red[w]);
    return r;
}

static __device__ double block_sum(double v, Shared &sh)
{
    return block_reduce(v, sh, [](double a, double b) { return a + b; });
}

/* Warp 0: the digit (bin of hist) holding the kk-th largest element, and how
 * many elements lie in the bins above it. Lane l owns bins 255-8l down to
 * 248-8l; an inclusive scan over lanes counts from the top. */
static __device__ void find_digit(const uint32_t *hist, int kk, Shared &sh)
{
    const int lane = threadIdx.x & 31;
    if (lane == 0) {            /* only stays if the counts are short of kk */
        sh.digit = 0;
        sh.above = 0;
    }
    __syncwarp();
    uint32_t c[8], s = 0;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        c[j] = hist[255 - 8 * lane - j];
        s += c[j];
    }
    uint32_t incl = s;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        uint32_t t = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o)
            incl += t;
    }
    const uint32_t excl = incl - s, want = (uint32_t)kk;
    if (excl < want && want <= incl) {
        uint32_t acc = excl;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            if (acc + c[j] >= want && acc < want) {
                sh.digit = 255 - 8 * lane - j;
                sh.above = (int)acc;
            }
            acc += c[j];
        }
    }
}

/* The kk-th largest key among those `visit` yields (each thread visits its
 * own share), by 8-bit digits from bit `top` down. Returns the key; *rank is
 * left with how many elements equal to it belong to the top kk. */
template <typename KeyT, typename Visit>
static __device__ KeyT kth_largest(int top, int kk, Shared &sh, Visit visit, int *rank)
{
    KeyT prefix = 0, mask = 0;
    for (int shift = top; shift >= 0; shift -= 8) {
        for (int j = threadIdx.x; j < 256; j += SEL_THREADS)
            sh.hist[j] = 0;
        __syncthreads();
        visit([&](KeyT x) {
            if ((x & mask) == prefix)
                atomicAdd(&sh.hist[(unsigned)(x >> shift) & 255u], 1u);
        });
        __syncthreads();
        if (threadIdx.x < 32)
            find_digit(sh.hist, kk, sh);
        __syncthreads();
        prefix |= (KeyT)sh.digit << shift;
        mask |= (KeyT)255 << shift;
        kk -= sh.above;
        /* sh.digit is rewritten only after the next round's two barriers */
    }
    *rank = kk;
    return prefix;
}

/* (key desc, index asc): "a goes before b" */
static __device__ __forceinline__ bool before(uint64_t ka, int32_t ia, uint64_t kb, int32_t ib)
{
    return ka > kb || (ka == kb && ia < ib);
}

/* Bitonic sort of sh.key/idx[0..n) best first, padded to a power of two with
 * entries that sort last. n <= SEL_CAP. */
static __device__ void sort_best_first(Shared &sh, int n)
{
    int P = 1;
    while (P < n)
        P <<= 1;
    for (int j = n + threadIdx.x; j < P; j += SEL_THREADS) {
        sh.key[j] = 0ull;
        sh.idx[j] = 0x7fffffff;
    }
    __syncthreads();
    for (int size = 2; size <= P; size <<= 1)
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int t = threadIdx.x; t < P / 2; t += SEL_THREADS) {
                const int i = 2 * t - (t & (stride - 1)), j = i + stride;
                const uint64_t ki = sh.key[i], kj = sh.key[j];
                const int32_t ii = sh.idx[i], ij = sh.idx[j];
                const bool swap = (i & size) == 0 ? before(kj, ij, ki, ii)
                                                  : before(ki, ii, kj, ij);
                if (swap) {
                    sh.key[i] = kj;
                    sh.key[j] = ki;
                    sh.idx[i] = ij;
                    sh.idx[j] = ii;
                }
            }
            __syncthreads();
        }
}

/* ptopk in training: Row's reach and a_reach for the bound L (0: none). */
static __device__ void train_reach(Row &r, double L, float amax)
{
    const double q = L - r.lambda * (double)amax;
    if (q <= 0.0) {
        r.reach = -INFINITY;
    } else {
        const double qq = fmin(q * (1.0 - 1e-15), 1.0 - 1e-15);
        r.reach = __double2float_rd(r.beta * log(qq / (1.0 - qq)));
    }
    r.a_reach = L > 1.0 && r.lambda > 0.0 ? __double2float_rd((L - 1.0) / r.lambda * (1.0 - 1e-6))
                                          : -INFINITY;
}

/* Is the latent a candidate: could its score reach the bound? */
template <int KIND>
static __device__ __forceinline__ bool candidate(const Row &r, float z, float b, uint32_t bits,
                                                 uint32_t lo)
{
    if (KIND == SAE_K_SEL_PTOPK_TRAIN)
        return train_candidate(r, train_key(r, z, b, bits));
    return fkeys<KIND>(r, z, b, bits).upper >= lo;
}

/* ---- the kernel ----------------------------------------------------------- */
template <int KIND>
static __global__ void __launch_bounds__(SEL_THREADS)
topk_kernel(const float *z, int M, int k, sae_k_sel p, int32_t *out_idx, float *out_val)
{
    __shared__ Shared sh;
    const int64_t row = blockIdx.x;
    Row r;
    r.z = z + row * M;
    r.b = p.b_enc;
    r.M = M;
    r.mean = 0.0;
    r.rstd = 1.0;
    r.t_scale = 1.0 / p.beta;
    r.beta = p.beta;
    r.lambda = p.lambda;
    r.lambda_f = (float)p.lambda;
    r.noise = KIND == SAE_K_SEL_PTOPK_TRAIN && p.noise;
    r.key.v[0] = (uint32_t)p.seed;
    r.key.v[1] = (uint32_t)(p.seed >> 32);
    r.row = (uint32_t)(p.row0 + row);
    r.step = p.step;

    /* 0. layernorm statistics, as ptopk_select (arch.c): one pass of sum and sum of
     * squares in double, var = E[a^2] - mean^2 clamped at 0; in training also
     * the largest |a| (for the candidates' bound) */
    float amax = 0.0f;
    if (KIND == SAE_K_SEL_PTOPK_TRAIN || (KIND == SAE_K_SEL_PTOPK && p.layernorm)) {
        Row plain = r;          /* statistics need no noise */
        plain.noise = false;
        double s = 0.0, q = 0.0;
        for_each(plain, [&](int, float zv, float bv, uint32_t) {
            const float af = __fadd_rn(zv, bv);
            const double a = (double)af;
            s += a;
            q = __dadd_rn(q, __dmul_rn(a, a));
            amax = fmaxf(amax, fabsf(af));
        });
        s = block_sum(s, sh);
        q = block_sum(q, sh);
        amax = block_reduce(amax, sh, [](float a, float b) { return fmaxf(a, b); });
        if (p.layernorm) {
            r.mean = s / M;
            const double var = __dsub_rn(q / M, __dmul_rn(r.mean, r.mean));
            r.rstd = 1.0 / sqrt((var > 0.0 ? var : 0.0) + 1e-5);
            r.t_scale = r.rstd / p.beta;
        }
    }
    r.mean_f = (float)r.mean;
    r.rstd_f = (float)r.rstd;
    r.key_abs = (float)(0.0625 + 1.2e-7 * r.rstd * fabs(r.mean));

    /* 1. lower bound L on the k-th largest score (none when k exceeds the
     * number of threads: then k maxima are not k distinct latents). Each
     * thread takes the largest lower bound of a score over its own latents,
     * and L is the k-th largest of those. For ptopk in training (keys cost
     * the most) the bound comes from a quarter of the latents, which admits
     * about four times the candidates (still far fewer than SEL_CAP at k 32);
     * a thread's lower bound is the larger of sigma((key - margin) / beta)
     * over its keys (the gate alone) and lambda |a| + 1 where key - margin
     * reaches 40 beta (the gate is then 1.0 in double) or lambda |a|
     * otherwise, each lowered by its roundings. */
    uint32_t lo = 0u;
    if (k <= SEL_THREADS) {
        uint32_t mx = 0u;
        if (KIND == SAE_K_SEL_PTOPK_TRAIN) {
            const float saturated = __double2float_ru(40.0 * p.beta);
            float key_lo = -INFINITY, score_lo = 0.0f;
            for_each(r, [&](int, float zv, float bv, uint32_t bits) {
                const TrainKey t = train_key(r, zv, bv, bits);
                const float klo = t.key - t.margin;
                key_lo = fmaxf(key_lo, klo);
                score_lo = fmaxf(score_lo, __fmaf_rn(r.lambda_f, fabsf(t.a),
                                                     klo >= saturated ? 1.0f : 0.0f));
            }, 4);
            const double gate = 1.0 / (1.0 + exp(-(double)key_lo / p.beta));
            const double own = fmax(gate * (1.0 - 1e-12), score_lo * (1.0 - 4e-7));
            mx = key32(__double2float_rd(own));
        } else {
            for_each(r, [&](int, float zv, float bv, uint32_t bits) {
                const uint32_t x = fkeys<KIND>(r, zv, bv, bits).lower;
                mx = x > mx ? x : mx;
            });
        }
        sh.tmax[threadIdx.x] = mx;
        __syncthreads();
        int unused;
        const uint32_t L = kth_largest<uint32_t>(24, k, sh, [&](auto add) {
            add(sh.tmax[threadIdx.x]);
        }, &unused);
        if (KIND != SAE_K_SEL_PTOPK || L == 0u) {
            lo = L;
        } else {
            const double f = (double)unkey32(L);
            lo = key32(__double2float_rd(f * (1.0 - 2.0 * PTOPK_REL) - 2.0 * PTOPK_ABS));
        }
    }
    /* ptopk in training: a latent whose score s reaches L has
     * sigmoid(x / beta) >= L - lambda max|a|, so x >= beta logit(that)
     * (reach; the gate's double rounding is allowed for, and below 1e-15 of
     * 1 a gate may round to 1.0), and 1 + lambda |a| >= L (a_reach) */
    if (KIND == SAE_K_SEL_PTOPK_TRAIN)
        train_reach(r, lo == 0u ? 0.0 : (double)unkey32(lo), amax);

    /* 2. gather the candidates, appending through one shared counter with a
     * single atomic per warp */
    if (threadIdx.x == 0)
        sh.count = 0;
    __syncthreads();
    for_each_uniform(r, [&](int i, float zv, float bv, uint32_t bits, bool ok) {
        const bool take = ok && candidate<KIND>(r, zv, bv, bits, lo);
        const unsigned ballot = __ballot_sync(0xffffffffu, take);
        if (!ballot)            /* the same in the whole warp */
            return;
        const int lane = threadIdx.x & 31, leader = __ffs(ballot) - 1;
        int base = 0;
        if (lane == leader)
            base = atomicAdd(&sh.count, __popc(ballot));
        base = __shfl_sync(0xffffffffu, base, leader);
        const int pos = base + __popc(ballot & ((1u << lane) - 1u));
        if (take && pos < SEL_CAP) {  /* a and the noise bits, for the exact key below */
            sh.key[pos] = (uint64_t)bits << 32 | __float_as_uint(__fadd_rn(zv, bv));
            sh.idx[pos] = i;
        }
    });
    __syncthreads();
    const int n_cand = sh.count;

    if (n_cand >= k && n_cand <= SEL_CAP) {
        /* 3. the common case: the candidates' exact keys, a thread each
         * (computed where a candidate was found, one lane's double work
         * held up its warp), then sort them and keep the first k */
        for (int c = threadIdx.x; c < n_cand; c += SEL_THREADS) {
            const uint64_t packed = sh.key[c];
            sh.key[c] = xkey<KIND>(r, __uint_as_float((uint32_t)packed), (uint32_t)(packed >> 32));
        }
        __syncthreads();
        sort_best_first(sh, n_cand);
    } else {
        /* slow path: exact k-th largest key by radix select over the row */
        if (n_cand < k) {       /* cannot happen (L is a lower bound); stay correct */
            lo = 0u;
            if (KIND == SAE_K_SEL_PTOPK_TRAIN)
                train_reach(r, 0.0, amax);
        }
        int need;
        const uint64_t kth = kth_largest<uint64_t>(KIND == SAE_K_SEL_TOPK ? 24 : 56, k, sh,
            [&](auto add) {
                for_each(r, [&](int, float zv, float bv, uint32_t bits) {
                    if (candidate<KIND>(r, zv, bv, bits, lo))
                        add(xkey<KIND>(r, __fadd_rn(zv, bv), bits));
                });
            }, &need);
        /* keys above kth: k - need of them, any order; then the `need`
         * lowest-index latents whose key equals kth, in index order */
        const int n_above = k - need;
        if (threadIdx.x == 0)
            sh.count = 0;
        for (int e = threadIdx.x; e < k; e += SEL_THREADS) {
            sh.key[e] = 0ull;   /* every slot gets written below; a valid */
            sh.idx[e] = 0;      /* index here keeps the final reads in bounds regardless */
        }
        __syncthreads();
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        int ties_seen = 0;      /* the same in every thread */
        for (int base = 0; base < M; base += SEL_THREADS) {
            const int i = base + threadIdx.x;
            uint64_t x = 0ull;
            bool in = false;
            if (i < M) {
                const float zv = r.z[i], bv = r.b[i];
                const uint32_t bits = noise_block(r, i >> 2).v[i & 3];
                in = candidate<KIND>(r, zv, bv, bits, lo);
                if (in)
                    x = xkey<KIND>(r, __fadd_rn(zv, bv), bits);
            }
            if (in && x > kth) {
                const int pos = atomicAdd(&sh.count, 1);
                if (pos < n_above) {
                    sh.key[pos] = x;
                    sh.idx[pos] = i;
                }
            }
            const bool tie = in && x == kth;
            const unsigned ballot = __ballot_sync(0xffffffffu, tie);
            if (lane == 0)
                sh.warp_total[warp] = __popc(ballot);
            __syncthreads();
            int rank = ties_seen + __popc(ballot & ((1u << lane) - 1u)), tile = 0;
            for (int w = 0; w < SEL_WARPS; w++) {
                rank += w < warp ? sh.warp_total[w] : 0;
                tile += sh.warp_total[w];
            }
            if (tie && rank < need) {
                sh.key[n_above + rank] = x;
                sh.idx[n_above + rank] = i;
            }
            ties_seen += tile;
            __syncthreads();
        }
        sort_best_first(sh, k);
    }

    /* write the k winners and their values (topk: ReLU(a); ptopk: a) */
    for (int e = threadIdx.x; e < k; e += SEL_THREADS) {
        const int i = sh.idx[e];
        const float a = __fadd_rn(r.z[i], r.b[i]);
        out_idx[row * k + e] = i;
        out_val[row * k + e] = KIND == SAE_K_SEL_TOPK ? (a > 0.0f ? a : 0.0f) : a;
    }
}

extern "C" int sae_k_topk(const float *z, int64_t B, int M, int k, const sae_k_sel *sel,
                          int32_t *indices, float *values, void *stream)
{
    if (B <= 0)
        return 0;
    if (B > 0x7fffffffLL || M <= 0 || k < 1 || k > M || k > SAE_K_TOPK_MAX)
        return (int)cudaErrorInvalidValue;
    const sae_k_sel p = *sel;
    if (p.kind == SAE_K_SEL_TOPK)
        LAUNCH(topk_kernel<SAE_K_SEL_TOPK>, (unsigned)B, SEL_THREADS, stream, z, M, k, p, indices,
               values);
    else if (p.kind == SAE_K_SEL_PTOPK)
        LAUNCH(topk_kernel<SAE_K_SEL_PTOPK>, (unsigned)B, SEL_THREADS, stream, z, M, k, p,
               indices, values);
    else if (p.kind == SAE_K_SEL_PTOPK_TRAIN)
        LAUNCH(topk_kernel<SAE_K_SEL_PTOPK_TRAIN>, (unsigned)B, SEL_THREADS, stream, z, M, k, p,
               indices, values);
    else
        return (int)cudaErrorInvalidValue;
    return (int)cudaGetLastError();
}
