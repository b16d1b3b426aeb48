/* GridOptim's move for one float32 CPU tensor, fused into one pass (see grid_move_cpu.py).

   A statement-by-statement transcription of grid_optim.move_on_grid fed keys (the counter-hash
   random source of random_bits.py), with geometry.grid_position and geometry.grid_value
   inlined: each line below is one torch op there, rounded to float32 in the same order, so the
   result is bit-identical (tests/test_optim.py checks every format kind against it). Built with
   -ffp-contract=off so that no multiply-add is fused into one rounding. Why it exists: on CPU,
   torch.compile scalarises float<->int bit casts, which made the compiled move 1.9x an AdamW
   step; this loop vectorises them. */

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

static inline uint32_t bits_of(float x) { uint32_t u; memcpy(&u, &x, sizeof u); return u; }
static inline float float_of(uint32_t u) { float x; memcpy(&x, &u, sizeof x); return x; }

/* torch.clamp: NaN stays NaN */
static inline float clamp(float x, float lo, float hi) { return x != x ? x : (x < lo ? lo : (x > hi ? hi : x)); }

/* random_bits._mix32 on 32-bit words (torch keeps them in int64 lanes masked to 32 bits) */
static inline uint32_t mix32(uint32_t h) {
    h ^= h >> 16;
    h *= 0x7FEB352Du;
    h ^= h >> 15;
    h *= 0x2C1B3C6Du;
    return h ^ (h >> 16);
}

typedef struct {  /* geometry._layout and index_range, as float32 */
    float min_normal, inv_min_normal, subnormal_step, man_scale, step_scale, inv_step_scale, top, bottom;
    int32_t min_normal_bits;
    int is_signed;
} layout_t;

static inline float grid_position(float x, const layout_t *L) {
    float magnitude = fabsf(x);
    float subnormal_part = clamp(magnitude * L->inv_min_normal, -INFINITY, 1.0f);
    float normal = clamp(magnitude, L->min_normal, INFINITY);
    float position = (float)((int32_t)bits_of(normal) - L->min_normal_bits) * L->inv_step_scale;
    position = clamp(position + subnormal_part * L->man_scale, -INFINITY, L->top);
    position = copysignf(position, x);
    return L->is_signed ? position : clamp(position, 0.0f, INFINITY);
}

static inline float grid_value(float index, const layout_t *L) {
    float magnitude = fabsf(index);
    float subnormal = magnitude * L->subnormal_step;
    float above = clamp(magnitude - L->man_scale, 0.0f, INFINITY) * L->step_scale;
    float normal = float_of((uint32_t)((int32_t)above + L->min_normal_bits));
    return copysignf(magnitude < L->man_scale ? subnormal : normal, index);
}

static inline float nan_to_num(float x) {
    return x != x ? 0.0f : (x == INFINITY ? 3.4028234663852886e+38f : (x == -INFINITY ? -3.4028234663852886e+38f : x));
}

/* Entries [lo, hi): a plain loop the compiler vectorises. scale_step: 0 = one scale for all
   (or none: scale is 1), 1 = one per entry. */
static void move_range(float *restrict p, float *restrict buf, const float *restrict grad, const float *restrict scale,
                       int64_t scale_step, int64_t lo, int64_t hi, float lr, float momentum, float decay, float clip,
                       uint32_t key0, uint32_t key1, layout_t layout, int64_t *restrict counts) {
    const layout_t *L = &layout;
    int64_t attempted = 0, flips = 0;
    for (int64_t j = lo; j < hi; j++) {
        float s = scale[j * scale_step];
        float b = buf[j] * momentum;
        b = b + grad[j];
        buf[j] = b;
        float target = p[j] * decay;
        target = (target - b * lr) * s;
        float here = nearbyintf(grid_position(p[j] * s, L));  /* round half to even */
        float rungs = clamp(nan_to_num(grid_position(target, L) - here), -clip, clip);
        uint32_t draw = mix32(mix32((uint32_t)j ^ key0) ^ key1) & 0xFFFFFF;
        float moved = clamp(floorf(rungs + (float)(int32_t)draw * 0x1p-24f) + here, L->bottom, L->top);
        attempted += rungs != 0.0f;
        flips += moved != here;
        p[j] = grid_value(moved, L) / s;
    }
    counts[0] = attempted;
    counts[1] = flips;
}

/* hyper = (lr, momentum, decay factor, rung clip or inf), keys = the two hash keys;
   counts <- (attempted, flips). */
void grid_move(float *p, float *buf, const float *grad, int64_t n, const float *scale, int64_t scale_step,
               const float *hyper, uint32_t key0, uint32_t key1, const layout_t *layout, int64_t *counts,
               int threads) {
    float lr = hyper[0], momentum = hyper[1], decay = hyper[2], clip = hyper[3];
    int64_t attempted = 0, flips = 0;
    layout_t L = *layout;
#pragma omp parallel num_threads(threads) reduction(+ : attempted, flips)
    {
        int64_t parts = omp_get_num_threads(), per = (n + parts - 1) / parts;
        int64_t lo = omp_get_thread_num() * per, hi = lo + per < n ? lo + per : n;
        int64_t part[2] = {0, 0};
        if (lo < hi)
            move_range(p, buf, grad, scale, scale_step, lo, hi, lr, momentum, decay, clip, key0, key1, L, part);
        attempted += part[0];
        flips += part[1];
    }
    counts[0] = attempted;
    counts[1] = flips;
}
