/* vec.c - see vec.h. */
#include <math.h>
#include <string.h>

#include "vec.h"

#define LANES 16

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

CLONES void vec_axpy(float alpha, const float *x, float *y, int n)
{
    for (int j = 0; j < n; j++)
        y[j] += alpha * x[j];
}

/* log(x) for normal x > 0 within 2e-5: the exponent plus 2 atanh((m-1)/(m+1))
 * of the mantissa m in [1, 2), to the t^7 term (|t| < 1/3). Branch-free, so
 * the loop below vectorises. */
static inline float fast_log(float x)
{
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    float e = (float)((int)(bits >> 23) - 127);
    bits = (bits & 0x007fffffu) | 0x3f800000u;
    float m;
    memcpy(&m, &bits, sizeof m);
    float t = (m - 1.0f) / (m + 1.0f), t2 = t * t;
    return e * 0.693147181f +
           2.0f * t * (1.0f + t2 * (1.0f / 3.0f + t2 * (1.0f / 5.0f + t2 * (1.0f / 7.0f))));
}

CLONES void vec_logistic_key(const float *z, const float *bias, float mean, float rstd,
                             const uint32_t *bits, int n, float *key)
{
    for (int i = 0; i < n; i++) {
        float u = ((float)(bits[i] >> 8) + 0.5f) * 0x1p-24f;
        key[i] = (z[i] + bias[i] - mean) * rstd + (fast_log(u) - fast_log(1.0f - u));
    }
}

CLONES512 void vec_sum_sq(const float *z, const float *bias, int n, double *sum, double *sq,
                          double *absmax)
{
    double s[8] = {0}, q[8] = {0}, m[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) {
            double a = (double)(z[i + l] + bias[i + l]);
            s[l] += a;
            q[l] += a * a;
            m[l] = fabs(a) > m[l] ? fabs(a) : m[l];
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

CLONES512 void vec_ptopk_bound(const float *z, const float *bias, int n, double mean, double scale,
                            double lambda, double *ub, double *chunk_max)
{
    for (int i = 0; i < n; i++) {
        double a = (double)(z[i] + bias[i]);
        double t = (a - mean) * scale, mag = lambda * fabs(a);
        double bound = t <= -40.0 ? mag + 4.3e-18 : 1.0 + mag;
        ub[i] = t < 40.0 ? -bound : bound;
    }
    /* the largest |ub| of each chunk, in lanes so that it vectorises */
    for (int c = 0; c * VEC_CHUNK < n; c++) {
        double lane[8] = {0};
        int lo = c * VEC_CHUNK, hi = lo + VEC_CHUNK < n ? lo + VEC_CHUNK : n, i = lo;
        for (; i + 8 <= hi; i += 8)
            for (int l = 0; l < 8; l++) {
                double v = fabs(ub[i + l]);
                lane[l] = v > lane[l] ? v : lane[l];
            }
        double m = 0.0;
        for (int l = 0; l < 8; l++)
            m = lane[l] > m ? lane[l] : m;
        for (; i < hi; i++)
            m = fabs(ub[i]) > m ? fabs(ub[i]) : m;
        chunk_max[c] = m;
    }
}

/* Written with vector types: GCC does not vectorise this max-reduction as a
 * plain loop (it would be scalar even in the AVX2 clone). */
typedef float v8f __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));

CLONES void vec_chunk_max(const float *z, const float *bias, int n, int chunk, float *chunk_max)
{
    for (int c = 0; c * chunk < n; c++) {
        int lo = c * chunk, hi = lo + chunk < n ? lo + chunk : n, i = lo;
        v8f lane = {-INFINITY, -INFINITY, -INFINITY, -INFINITY,
                    -INFINITY, -INFINITY, -INFINITY, -INFINITY};
        for (; i + 8 <= hi; i += 8) {
            v8f zv, bv;
            memcpy(&zv, z + i, sizeof zv);
            memcpy(&bv, bias + i, sizeof bv);
            v8f a = zv + bv;
            v8i more = a > lane; /* false for NaN: NaNs never enter */
            lane = (v8f)(((v8i)a & more) | ((v8i)lane & ~more));
        }
        float m = -INFINITY;
        for (int l = 0; l < 8; l++)
            m = lane[l] > m ? lane[l] : m;
        for (; i < hi; i++)
            m = z[i] + bias[i] > m ? z[i] + bias[i] : m;
        chunk_max[c] = m;
    }
}

CLONES void vec_ptopk_train_chunks(const float *key, const float *z, const float *bias, int n,
                                   int chunk, float saturated, float lambda, float *key_max,
                                   float *lb_max, float *absa_max)
{
    const v8f zero = {0}, one = zero + 1.0f;
    const v8i abs_mask = (v8i){0} + 0x7fffffff;
    for (int c = 0; c * chunk < n; c++) {
        int lo = c * chunk, hi = lo + chunk < n ? lo + chunk : n, i = lo;
        v8f km = zero - INFINITY, lbm = km, am = zero;
        for (; i + 8 <= hi; i += 8) {
            v8f k, zv, bv;
            memcpy(&k, key + i, sizeof k);
            memcpy(&zv, z + i, sizeof zv);
            memcpy(&bv, bias + i, sizeof bv);
            v8f aa = (v8f)((v8i)(zv + bv) & abs_mask);
            v8f margin = 2e-4f + 1e-6f * (v8f)((v8i)k & abs_mask);
            v8i sat = (k - margin) >= saturated;
            v8f lb = lambda * aa + (v8f)((v8i)one & sat);
            v8i more = k > km;
            km = (v8f)(((v8i)k & more) | ((v8i)km & ~more));
            more = lb > lbm;
            lbm = (v8f)(((v8i)lb & more) | ((v8i)lbm & ~more));
            more = aa > am;
            am = (v8f)(((v8i)aa & more) | ((v8i)am & ~more));
        }
        float kmax = -INFINITY, lbmax = -INFINITY, amax = 0.0f;
        for (int l = 0; l < 8; l++) {
            kmax = km[l] > kmax ? km[l] : kmax;
            lbmax = lbm[l] > lbmax ? lbm[l] : lbmax;
            amax = am[l] > amax ? am[l] : amax;
        }
        for (; i < hi; i++) {
            float aa = fabsf(z[i] + bias[i]), margin = 2e-4f + 1e-6f * fabsf(key[i]);
            float lb = lambda * aa + (key[i] - margin >= saturated ? 1.0f : 0.0f);
            kmax = key[i] > kmax ? key[i] : kmax;
            lbmax = lb > lbmax ? lb : lbmax;
            amax = aa > amax ? aa : amax;
        }
        key_max[c] = kmax;
        lb_max[c] = lbmax;
        absa_max[c] = amax;
    }
}
