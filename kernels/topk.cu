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
 *   0. ptopk with layernorm: mean and variance of a over the row (double).
 *   1. bound: each thread takes the max lower float key (fkeys) over its own
 *      latents; the k-th largest of those SEL_THREADS maxima (a radix select
 *      in shared memory) is a key L that at least k latents reach, so L <=
 *      the row's k-th largest key.
 *   2. gather: the latents whose upper float key is >= L are the candidates
 *      (inference's ptopk lowers L by its float key's error bound instead),
 *      so no latent of the exact top-k is missed. They go to shared memory
 *      with their exact key (the double score for ptopk: computed for
 *      candidates only). Typically there are k to 2k of them.
 *   3. sort the candidates by (exact key desc, index asc) with a bitonic sort
 *      and write the first k.
 * Two passes over the row (three for ptopk with layernorm), read from L2 after
 * the first, and no [B, M] scratch.
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
    float mean_f, rstd_f, inv_beta_f;   /* PTOPK_TRAIN's float keys */
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
 *   ptopk in training: all in float (double here costs as much as the GEMM),
 *          as s - 1 = lambda |a| - q, q = sigma(-t) = 1 - gate, which keeps
 *          the ranking of saturated gates by lambda |a| (s itself rounds to
 *          1 + a few ulps). Each key carries its own error bound: t's error
 *          dt from every rounding on the way (and the fast log's), moved to
 *          q by the slope q (1 - q), which changes by at most a factor e^dt
 *          within dt, plus the fast exp's own error. */
struct KeyPair {
    uint32_t lower, upper;
};

template <int KIND>
static __device__ __forceinline__ KeyPair fkeys(const Row &r, float z, float b, uint32_t bits)
{
    const float a = __fadd_rn(z, b);
    if (KIND == SAE_K_SEL_TOPK)
        return {key32(a), key32(a)};
    if (KIND == SAE_K_SEL_PTOPK) {
        const float g = 1.0f / (1.0f + expf(-(float)ptopk_t<KIND>(r, a, bits)));
        const uint32_t k = key32(g + r.lambda_f * fabsf(a));
        return {k, k};
    }
    /* the fast intrinsics: __logf within 2^-21.41 absolute on [0.5, 2] and 3
     * ulps elsewhere, __expf within 2 + 1.173 |t| ulps */
    const float l = __fmul_rn(__fsub_rn(a, r.mean_f), r.rstd_f);
    float g = 0.0f, dg = 0.0f;
    if (r.noise) {
        const float u = ((float)(bits >> 8) + 0.5f) * 5.9604644775390625e-8f;
        const float lu = __logf(u), l1u = __logf(__fsub_rn(1.0f, u));
        g = __fsub_rn(lu, l1u);
        dg = 4e-7f * (2.0f + fabsf(lu) + fabsf(l1u));
    }
    const float x = __fadd_rn(l, g);
    const float dx = 1.2e-7f * r.rstd_f * fabsf(r.mean_f) + 3e-7f * fabsf(l) + dg +
                     1.2e-7f * fabsf(x);
    const float t = __fmul_rn(x, r.inv_beta_f);
    const float dt = dx * r.inv_beta_f * 1.000001f + 2.4e-7f * fabsf(t);
    const float q = 1.0f / (1.0f + __expf(t));
    /* sigma' changes by at most e^dt over dt; e^dt <= 1 + 1.3 dt below 0.5,
     * and sigma' <= 1/4 always */
    const float slope = dt < 0.5f ? fminf(0.25f, q * (1.0f - q) * (1.0f + 1.3f * dt) * 1.01f)
                                  : 0.25f;
    const float la = __fmul_rn(r.lambda_f, fabsf(a));
    const float key = __fsub_rn(la, q);
    const float margin = slope * dt + 2e-7f * (4.0f + 1.2f * fabsf(t)) * q + 3e-7f * la +
                         1.2e-7f * fabsf(key) + 1e-30f;
    return {key32(key - margin), key32(key + margin)};
}

/* The exact key: the CPU's score. */
template <int KIND>
static __device__ __forceinline__ uint64_t xkey(const Row &r, float z, float b, uint32_t bits)
{
    const float a = __fadd_rn(z, b);
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

static __device__ double block_sum(double v, Shared &sh)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_down_sync(0xffffffffu, v, o);
    __syncthreads();
    if ((threadIdx.x & 31) == 0)
        sh.red[threadIdx.x >> 5] = v;
    __syncthreads();
    double s = 0.0;
    for (int w = 0; w < SEL_WARPS; w++)
        s += sh.red[w];
    return s;
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
     * squares in double, var = E[a^2] - mean^2 clamped at 0 */
    if (KIND != SAE_K_SEL_TOPK && p.layernorm) {
        Row plain = r;          /* statistics need no noise */
        plain.noise = false;
        double s = 0.0, q = 0.0;
        for_each(plain, [&](int, float zv, float bv, uint32_t) {
            const double a = (double)__fadd_rn(zv, bv);
            s += a;
            q = __dadd_rn(q, __dmul_rn(a, a));
        });
        s = block_sum(s, sh);
        q = block_sum(q, sh);
        r.mean = s / M;
        const double var = __dsub_rn(q / M, __dmul_rn(r.mean, r.mean));
        r.rstd = 1.0 / sqrt((var > 0.0 ? var : 0.0) + 1e-5);
        r.t_scale = r.rstd / p.beta;
    }
    r.mean_f = (float)r.mean;
    r.rstd_f = (float)r.rstd;
    r.inv_beta_f = (float)(1.0 / p.beta);

    /* 1. lower bound on the k-th largest float key (no bound when k exceeds
     * the number of threads: then k maxima are not k distinct latents).
     * Training's ptopk keys cost the most: its bound comes from a quarter of
     * the latents, which admits about four times the candidates (still far
     * fewer than SEL_CAP at k 32) */
    uint32_t lo = 0u;
    if (k <= SEL_THREADS) {
        uint32_t mx = 0u;
        for_each(r, [&](int, float zv, float bv, uint32_t bits) {
            const uint32_t x = fkeys<KIND>(r, zv, bv, bits).lower;
            mx = x > mx ? x : mx;
        }, KIND == SAE_K_SEL_PTOPK_TRAIN ? 4 : 1);
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

    /* 2. gather the candidates, appending through one shared counter with a
     * single atomic per warp */
    if (threadIdx.x == 0)
        sh.count = 0;
    __syncthreads();
    for_each_uniform(r, [&](int i, float zv, float bv, uint32_t bits, bool ok) {
        const bool take = ok && fkeys<KIND>(r, zv, bv, bits).upper >= lo;
        const unsigned ballot = __ballot_sync(0xffffffffu, take);
        if (!ballot)            /* the same in the whole warp */
            return;
        const int lane = threadIdx.x & 31, leader = __ffs(ballot) - 1;
        int base = 0;
        if (lane == leader)
            base = atomicAdd(&sh.count, __popc(ballot));
        base = __shfl_sync(0xffffffffu, base, leader);
        const int pos = base + __popc(ballot & ((1u << lane) - 1u));
        if (take && pos < SEL_CAP) {
            sh.key[pos] = xkey<KIND>(r, zv, bv, bits);
            sh.idx[pos] = i;
        }
    });
    __syncthreads();
    const int n_cand = sh.count;

    if (n_cand >= k && n_cand <= SEL_CAP) {
        /* 3. the common case: sort the candidates, keep the first k */
        sort_best_first(sh, n_cand);
    } else {
        /* slow path: exact k-th largest key by radix select over the row */
        if (n_cand < k)         /* cannot happen (L is a lower bound); stay correct */
            lo = 0u;
        int need;
        const uint64_t kth = kth_largest<uint64_t>(KIND == SAE_K_SEL_TOPK ? 24 : 56, k, sh,
            [&](auto add) {
                for_each(r, [&](int, float zv, float bv, uint32_t bits) {
                    if (fkeys<KIND>(r, zv, bv, bits).upper >= lo)
                        add(xkey<KIND>(r, zv, bv, bits));
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
                in = fkeys<KIND>(r, zv, bv, bits).upper >= lo;
                if (in)
                    x = xkey<KIND>(r, zv, bv, bits);
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
