# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""The C source of the multi-buffer MD5 library that :mod:`md5_lanes` builds.

It travels as a string because Ansible ships only Python module_utils to the hosts
(AnsiballZ); :func:`md5_lanes.engine` compiles it there with the host's C compiler
(plain ``-O3 -shared -fPIC``, no ``-march``: the SIMD functions carry their own
``target`` attributes and are chosen at run time with ``__builtin_cpu_supports``).

The library, written from RFC 1321:

``void md5mb_compress_scalar(uint32_t *state4, const uint8_t *p, uint64_t nblocks)``
    MD5 compression of ``nblocks`` 64-byte blocks at ``p`` into one state.
``int md5mb_compress(uint32_t *states, const uint8_t *const *ptrs, const uint64_t *nblocks, int n)``
    ``n`` independent jobs: job ``j`` runs ``nblocks[j]`` blocks at ``ptrs[j]`` into
    ``states[4*j .. 4*j+3]``; jobs of 0 blocks are no-ops. The jobs go through the SIMD
    lanes longest first, a lane taking the next job as soon as its own is done; the
    last one or two finish in scalar code, which runs two interleaved streams in
    about the time of one (and without SIMD takes all the jobs two by two). Returns
    the number of lanes used: 16 (AVX-512F), 8 (AVX2) or 1.
``int md5mb_compress_lanes(int lanes, ...)``
    The same on at most ``lanes`` lanes (0: all the CPU has), so that tests can check
    each instruction set the machine has.
``int md5mb_lanes(void)``
    16, 8 or 1, for this CPU.

The AVX-512 kernel loads the message words of its 16 blocks with a 16x16 transpose
of 32-bit words: 1.45x the speed of gathering them (``vpgatherqd``), measured on an
AMD EPYC (Zen 5).
"""

SOURCE = r"""/* Multi-buffer MD5 (RFC 1321): independent streams hashed side by side, one per
 * 32-bit SIMD lane (16 with AVX-512, 8 with AVX2), or two at a time in scalar C.
 * Built with plain -O3: the SIMD functions carry their own target attributes and
 * are only called after a run-time CPU check. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
/* x86-64 only; -DMD5MB_NO_SIMD builds the scalar-only library anywhere (for tests). */
#if defined(__x86_64__) && !defined(MD5MB_NO_SIMD)
#define MD5MB_SIMD 1
#include <immintrin.h>
#endif

#define MAX_LANES 16

/* The 64 steps of RFC 1321 3.4: round function, the registers in their rotated
 * roles, message word, shift, T[i] = floor(2^32 * |sin(i + 1)|). Each
 * implementation defines STEP, so the table is written once. */
#define MD5_STEPS \
    STEP(F, a, b, c, d,  0,  7, 0xd76aa478) \
    STEP(F, d, a, b, c,  1, 12, 0xe8c7b756) \
    STEP(F, c, d, a, b,  2, 17, 0x242070db) \
    STEP(F, b, c, d, a,  3, 22, 0xc1bdceee) \
    STEP(F, a, b, c, d,  4,  7, 0xf57c0faf) \
    STEP(F, d, a, b, c,  5, 12, 0x4787c62a) \
    STEP(F, c, d, a, b,  6, 17, 0xa8304613) \
    STEP(F, b, c, d, a,  7, 22, 0xfd469501) \
    STEP(F, a, b, c, d,  8,  7, 0x698098d8) \
    STEP(F, d, a, b, c,  9, 12, 0x8b44f7af) \
    STEP(F, c, d, a, b, 10, 17, 0xffff5bb1) \
    STEP(F, b, c, d, a, 11, 22, 0x895cd7be) \
    STEP(F, a, b, c, d, 12,  7, 0x6b901122) \
    STEP(F, d, a, b, c, 13, 12, 0xfd987193) \
    STEP(F, c, d, a, b, 14, 17, 0xa679438e) \
    STEP(F, b, c, d, a, 15, 22, 0x49b40821) \
    STEP(G, a, b, c, d,  1,  5, 0xf61e2562) \
    STEP(G, d, a, b, c,  6,  9, 0xc040b340) \
    STEP(G, c, d, a, b, 11, 14, 0x265e5a51) \
    STEP(G, b, c, d, a,  0, 20, 0xe9b6c7aa) \
    STEP(G, a, b, c, d,  5,  5, 0xd62f105d) \
    STEP(G, d, a, b, c, 10,  9, 0x02441453) \
    STEP(G, c, d, a, b, 15, 14, 0xd8a1e681) \
    STEP(G, b, c, d, a,  4, 20, 0xe7d3fbc8) \
    STEP(G, a, b, c, d,  9,  5, 0x21e1cde6) \
    STEP(G, d, a, b, c, 14,  9, 0xc33707d6) \
    STEP(G, c, d, a, b,  3, 14, 0xf4d50d87) \
    STEP(G, b, c, d, a,  8, 20, 0x455a14ed) \
    STEP(G, a, b, c, d, 13,  5, 0xa9e3e905) \
    STEP(G, d, a, b, c,  2,  9, 0xfcefa3f8) \
    STEP(G, c, d, a, b,  7, 14, 0x676f02d9) \
    STEP(G, b, c, d, a, 12, 20, 0x8d2a4c8a) \
    STEP(H, a, b, c, d,  5,  4, 0xfffa3942) \
    STEP(H, d, a, b, c,  8, 11, 0x8771f681) \
    STEP(H, c, d, a, b, 11, 16, 0x6d9d6122) \
    STEP(H, b, c, d, a, 14, 23, 0xfde5380c) \
    STEP(H, a, b, c, d,  1,  4, 0xa4beea44) \
    STEP(H, d, a, b, c,  4, 11, 0x4bdecfa9) \
    STEP(H, c, d, a, b,  7, 16, 0xf6bb4b60) \
    STEP(H, b, c, d, a, 10, 23, 0xbebfbc70) \
    STEP(H, a, b, c, d, 13,  4, 0x289b7ec6) \
    STEP(H, d, a, b, c,  0, 11, 0xeaa127fa) \
    STEP(H, c, d, a, b,  3, 16, 0xd4ef3085) \
    STEP(H, b, c, d, a,  6, 23, 0x04881d05) \
    STEP(H, a, b, c, d,  9,  4, 0xd9d4d039) \
    STEP(H, d, a, b, c, 12, 11, 0xe6db99e5) \
    STEP(H, c, d, a, b, 15, 16, 0x1fa27cf8) \
    STEP(H, b, c, d, a,  2, 23, 0xc4ac5665) \
    STEP(I, a, b, c, d,  0,  6, 0xf4292244) \
    STEP(I, d, a, b, c,  7, 10, 0x432aff97) \
    STEP(I, c, d, a, b, 14, 15, 0xab9423a7) \
    STEP(I, b, c, d, a,  5, 21, 0xfc93a039) \
    STEP(I, a, b, c, d, 12,  6, 0x655b59c3) \
    STEP(I, d, a, b, c,  3, 10, 0x8f0ccc92) \
    STEP(I, c, d, a, b, 10, 15, 0xffeff47d) \
    STEP(I, b, c, d, a,  1, 21, 0x85845dd1) \
    STEP(I, a, b, c, d,  8,  6, 0x6fa87e4f) \
    STEP(I, d, a, b, c, 15, 10, 0xfe2ce6e0) \
    STEP(I, c, d, a, b,  6, 15, 0xa3014314) \
    STEP(I, b, c, d, a, 13, 21, 0x4e0811a1) \
    STEP(I, a, b, c, d,  4,  6, 0xf7537e82) \
    STEP(I, d, a, b, c, 11, 10, 0xbd3af235) \
    STEP(I, c, d, a, b,  2, 15, 0x2ad7d2bb) \
    STEP(I, b, c, d, a,  9, 21, 0xeb86d391)

/* ---- scalar ---------------------------------------------------------------- */

#define ROL32(x, s) (((x) << (s)) | ((x) >> (32 - (s))))
#define S_F(x, y, z) ((z) ^ ((x) & ((y) ^ (z))))
#define S_H(x, y, z) ((x) ^ ((y) ^ (z)))
#define S_I(x, y, z) ((y) ^ ((x) | ~(z)))
/* a += f(b, c, d). G = (b & d) | (c & ~d), the two terms disjoint: added one at a
 * time, the half that does not wait for b is added first (one step shorter chain). */
#define S_ADD_F(a, b, c, d) a += S_F(b, c, d)
#define S_ADD_G(a, b, c, d) a += (c) & ~(d); a += (b) & (d)
#define S_ADD_H(a, b, c, d) a += S_H(b, c, d)
#define S_ADD_I(a, b, c, d) a += S_I(b, c, d)

/* Byte by byte, so it is right on big-endian hosts too; gcc makes it one load on x86. */
static inline uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void md5mb_compress_scalar(uint32_t *state4, const uint8_t *p, uint64_t nblocks)
{
    uint32_t a = state4[0], b = state4[1], c = state4[2], d = state4[3];
    for (; nblocks; nblocks--, p += 64) {
        uint32_t X[16];
        for (int i = 0; i < 16; i++)
            X[i] = le32(p + 4 * i);
        uint32_t a0 = a, b0 = b, c0 = c, d0 = d;
#define STEP(f, a, b, c, d, k, s, t) \
        a += X[k] + (uint32_t)(t); \
        S_ADD_##f(a, b, c, d); \
        a = ROL32(a, s) + b;
        MD5_STEPS
#undef STEP
        a += a0; b += b0; c += c0; d += d0;
    }
    state4[0] = a; state4[1] = b; state4[2] = c; state4[3] = d;
}

/* Two streams at once: one MD5 chain keeps a core's integer units mostly idle,
 * two interleaved ones take about the time of one. */
static void compress_scalar_x2(uint32_t *s1, const uint8_t *p1, uint32_t *s2, const uint8_t *p2,
                               uint64_t nblocks)
{
    uint32_t a1 = s1[0], b1 = s1[1], c1 = s1[2], d1 = s1[3];
    uint32_t a2 = s2[0], b2 = s2[1], c2 = s2[2], d2 = s2[3];
    for (; nblocks; nblocks--, p1 += 64, p2 += 64) {
        uint32_t X1[16], X2[16];
        for (int i = 0; i < 16; i++) {
            X1[i] = le32(p1 + 4 * i);
            X2[i] = le32(p2 + 4 * i);
        }
        uint32_t a01 = a1, b01 = b1, c01 = c1, d01 = d1, a02 = a2, b02 = b2, c02 = c2, d02 = d2;
#define STEP(f, a, b, c, d, k, s, t) \
        a##1 += X1[k] + (uint32_t)(t); \
        a##2 += X2[k] + (uint32_t)(t); \
        S_ADD_##f(a##1, b##1, c##1, d##1); \
        S_ADD_##f(a##2, b##2, c##2, d##2); \
        a##1 = ROL32(a##1, s) + b##1; \
        a##2 = ROL32(a##2, s) + b##2;
        MD5_STEPS
#undef STEP
        a1 += a01; b1 += b01; c1 += c01; d1 += d01;
        a2 += a02; b2 += b02; c2 += c02; d2 += d02;
    }
    s1[0] = a1; s1[1] = b1; s1[2] = c1; s1[3] = d1;
    s2[0] = a2; s2[1] = b2; s2[2] = c2; s2[3] = d2;
}

/* Two jobs: together while both last, then the longer one alone. */
static void scalar_pair(uint32_t *s1, const uint8_t *p1, uint64_t n1,
                        uint32_t *s2, const uint8_t *p2, uint64_t n2)
{
    uint64_t m = n1 < n2 ? n1 : n2;
    compress_scalar_x2(s1, p1, s2, p2, m);
    md5mb_compress_scalar(s1, p1 + 64 * m, n1 - m);
    md5mb_compress_scalar(s2, p2 + 64 * m, n2 - m);
}

/* ---- the jobs ------------------------------------------------------------------ */

struct job { uint64_t nblocks; int j; };

/* Longest first: long jobs then overlap, and short ones fill in at the end. */
static int longest_first(const void *x, const void *y)
{
    uint64_t a = ((const struct job *)x)->nblocks, b = ((const struct job *)y)->nblocks;
    return a < b ? 1 : a > b ? -1 : 0;
}

/* The jobs that have blocks, longest first, in *order (local, or malloc'ed when
 * there are more than 64 jobs); returns how many, or -1 if malloc failed. */
static int sort_jobs(struct job *local, struct job **order, const uint64_t *nblocks, int n)
{
    *order = local;
    if (n > 64 && !(*order = malloc((size_t)n * sizeof **order)))
        return -1;
    int count = 0;
    for (int j = 0; j < n; j++)
        if (nblocks[j]) {
            (*order)[count].nblocks = nblocks[j];
            (*order)[count++].j = j;
        }
    qsort(*order, (size_t)count, sizeof **order, longest_first);
    return count;
}

/* No SIMD: the jobs two by two, paired with the job closest in length. */
static void scalar_jobs(uint32_t *states, const uint8_t *const *ptrs, const struct job *order, int count)
{
    int i = 0;
    for (; i + 1 < count; i += 2) {
        int j = order[i].j, k = order[i + 1].j;
        scalar_pair(states + 4 * j, ptrs[j], order[i].nblocks, states + 4 * k, ptrs[k], order[i + 1].nblocks);
    }
    if (i < count)
        md5mb_compress_scalar(states + 4 * order[i].j, ptrs[order[i].j], order[i].nblocks);
}

#ifdef MD5MB_SIMD

/* A lane kernel runs m blocks on every lane. ls holds the lane states as four
 * rows (a[L], b[L], c[L], d[L]); lane l reads its blocks at lp[l], lp[l] + stride[l],
 * ... (stride 0 for an idle lane, which hashes the dummy block over and over). */
typedef void (*lane_kernel)(uint32_t *ls, const uint8_t *const *lp, const uint64_t *stride,
                            uint64_t m);

/* ---- AVX-512: 16 lanes ------------------------------------------------------ */

/* vpternlogd truth tables: bit (x << 2 | y << 1 | z) of the immediate is f(x, y, z). */
#define Z_F(x, y, z) _mm512_ternarylogic_epi32(x, y, z, 0xca)
#define Z_G(x, y, z) _mm512_ternarylogic_epi32(x, y, z, 0xe4)
#define Z_H(x, y, z) _mm512_ternarylogic_epi32(x, y, z, 0x96)
#define Z_I(x, y, z) _mm512_ternarylogic_epi32(x, y, z, 0x39)

/* w[k] = word k of the 16 blocks at q[0..15]: a 16x16 transpose of 32-bit words. */
__attribute__((target("avx512f")))
static inline void load16(__m512i *w, const uint8_t *const *q)
{
    __m512i r[16], t[16];
    for (int l = 0; l < 16; l++)
        r[l] = _mm512_loadu_si512((const void *)q[l]);
    /* pairs of rows, interleaved words: per 128-bit quarter j, rows 2i, 2i+1, words 4j..4j+3 */
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    /* quads of rows: r[4g + e] holds word 4j + e of rows 4g..4g+3 in quarter j */
    for (int g = 0; g < 4; g++) {
        __m512i *u = t + 4 * g;
        r[4 * g + 0] = _mm512_unpacklo_epi64(u[0], u[2]);
        r[4 * g + 1] = _mm512_unpackhi_epi64(u[0], u[2]);
        r[4 * g + 2] = _mm512_unpacklo_epi64(u[1], u[3]);
        r[4 * g + 3] = _mm512_unpackhi_epi64(u[1], u[3]);
    }
    /* then a 4x4 transpose of 128-bit quarters, for each e */
    for (int e = 0; e < 4; e++) {
        __m512i v0 = _mm512_shuffle_i32x4(r[e], r[4 + e], 0x44);
        __m512i v1 = _mm512_shuffle_i32x4(r[e], r[4 + e], 0xee);
        __m512i v2 = _mm512_shuffle_i32x4(r[8 + e], r[12 + e], 0x44);
        __m512i v3 = _mm512_shuffle_i32x4(r[8 + e], r[12 + e], 0xee);
        w[e] = _mm512_shuffle_i32x4(v0, v2, 0x88);
        w[4 + e] = _mm512_shuffle_i32x4(v0, v2, 0xdd);
        w[8 + e] = _mm512_shuffle_i32x4(v1, v3, 0x88);
        w[12 + e] = _mm512_shuffle_i32x4(v1, v3, 0xdd);
    }
}

__attribute__((target("avx512f")))
static void md5x16(uint32_t *ls, const uint8_t *const *lp, const uint64_t *stride, uint64_t m)
{
    __m512i a = _mm512_loadu_si512(ls), b = _mm512_loadu_si512(ls + 16);
    __m512i c = _mm512_loadu_si512(ls + 32), d = _mm512_loadu_si512(ls + 48);
    const uint8_t *q[16];
    memcpy(q, lp, sizeof q);
    for (; m; m--) {
        __m512i W[16];
        load16(W, q);
        for (int l = 0; l < 16; l++)
            q[l] += stride[l];
        __m512i a0 = a, b0 = b, c0 = c, d0 = d;
#define STEP(f, a, b, c, d, k, s, t) \
        a = _mm512_add_epi32(a, _mm512_add_epi32(W[k], _mm512_set1_epi32((int)(t)))); \
        a = _mm512_add_epi32(a, Z_##f(b, c, d)); \
        a = _mm512_add_epi32(_mm512_rol_epi32(a, s), b);
        MD5_STEPS
#undef STEP
        a = _mm512_add_epi32(a, a0); b = _mm512_add_epi32(b, b0);
        c = _mm512_add_epi32(c, c0); d = _mm512_add_epi32(d, d0);
    }
    _mm512_storeu_si512(ls, a); _mm512_storeu_si512(ls + 16, b);
    _mm512_storeu_si512(ls + 32, c); _mm512_storeu_si512(ls + 48, d);
}

/* ---- AVX2: 8 lanes ---------------------------------------------------------- */

#define Y_XOR _mm256_xor_si256
#define Y_F(x, y, z) Y_XOR(z, _mm256_and_si256(x, Y_XOR(y, z)))
#define Y_H(x, y, z) Y_XOR(x, Y_XOR(y, z))
#define Y_I(x, y, z) Y_XOR(y, _mm256_or_si256(x, Y_XOR(z, ones)))
#define Y_ADD(a, x) a = _mm256_add_epi32(a, x)
/* a += f(b, c, d); G as in the scalar code */
#define Y_ADD_F(a, b, c, d) Y_ADD(a, Y_F(b, c, d))
#define Y_ADD_G(a, b, c, d) Y_ADD(a, _mm256_andnot_si256(d, c)); Y_ADD(a, _mm256_and_si256(b, d))
#define Y_ADD_H(a, b, c, d) Y_ADD(a, Y_H(b, c, d))
#define Y_ADD_I(a, b, c, d) Y_ADD(a, Y_I(b, c, d))

/* The 8x8 transpose of one half block: w[k] = word k of rows r[0..7]. */
__attribute__((target("avx2")))
static inline void transpose8(__m256i *w, const __m256i *r)
{
    __m256i t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int g = 0; g < 2; g++) {
        const __m256i *v = t + 4 * g;
        u[4 * g + 0] = _mm256_unpacklo_epi64(v[0], v[2]);
        u[4 * g + 1] = _mm256_unpackhi_epi64(v[0], v[2]);
        u[4 * g + 2] = _mm256_unpacklo_epi64(v[1], v[3]);
        u[4 * g + 3] = _mm256_unpackhi_epi64(v[1], v[3]);
    }
    for (int e = 0; e < 4; e++) {
        w[e] = _mm256_permute2x128_si256(u[e], u[4 + e], 0x20);
        w[4 + e] = _mm256_permute2x128_si256(u[e], u[4 + e], 0x31);
    }
}

__attribute__((target("avx2")))
static void md5x8(uint32_t *ls, const uint8_t *const *lp, const uint64_t *stride, uint64_t m)
{
    const __m256i ones = _mm256_set1_epi32(-1);
    __m256i a = _mm256_loadu_si256((const __m256i *)ls);
    __m256i b = _mm256_loadu_si256((const __m256i *)(ls + 8));
    __m256i c = _mm256_loadu_si256((const __m256i *)(ls + 16));
    __m256i d = _mm256_loadu_si256((const __m256i *)(ls + 24));
    const uint8_t *q[8];
    memcpy(q, lp, sizeof q);
    for (; m; m--) {
        __m256i W[16], lo[8], hi[8];
        for (int l = 0; l < 8; l++) {
            lo[l] = _mm256_loadu_si256((const __m256i *)q[l]);
            hi[l] = _mm256_loadu_si256((const __m256i *)(q[l] + 32));
            q[l] += stride[l];
        }
        transpose8(W, lo);
        transpose8(W + 8, hi);
        __m256i a0 = a, b0 = b, c0 = c, d0 = d;
#define STEP(f, a, b, c, d, k, s, t) \
        a = _mm256_add_epi32(a, _mm256_add_epi32(W[k], _mm256_set1_epi32((int)(t)))); \
        Y_ADD_##f(a, b, c, d); \
        a = _mm256_add_epi32(_mm256_or_si256(_mm256_slli_epi32(a, s), _mm256_srli_epi32(a, 32 - (s))), b);
        MD5_STEPS
#undef STEP
        a = _mm256_add_epi32(a, a0); b = _mm256_add_epi32(b, b0);
        c = _mm256_add_epi32(c, c0); d = _mm256_add_epi32(d, d0);
    }
    _mm256_storeu_si256((__m256i *)ls, a); _mm256_storeu_si256((__m256i *)(ls + 8), b);
    _mm256_storeu_si256((__m256i *)(ls + 16), c); _mm256_storeu_si256((__m256i *)(ls + 24), d);
}

/* ---- scheduling jobs through the lanes --------------------------------------- */

static const uint8_t dummy_block[64] __attribute__((aligned(64)));

static void run_lanes(int L, lane_kernel kernel, uint32_t *states, const uint8_t *const *ptrs,
                      const struct job *order, int count)
{
    uint32_t ls[4 * MAX_LANES] __attribute__((aligned(64))) = {0};
    const uint8_t *lp[MAX_LANES];
    uint64_t left[MAX_LANES], stride[MAX_LANES];
    int job[MAX_LANES], next = 0, active = 0;
    for (int l = 0; l < L; l++) {
        job[l] = -1; lp[l] = dummy_block; left[l] = 0; stride[l] = 0;
    }
    for (;;) {
        for (int l = 0; l < L && next < count; l++)
            if (job[l] < 0) {
                int j = order[next].j;
                job[l] = j; lp[l] = ptrs[j]; left[l] = order[next++].nblocks; stride[l] = 64;
                for (int r = 0; r < 4; r++)
                    ls[r * L + l] = states[4 * j + r];
                active++;
            }
        if (!active)
            break;
        if (active <= 2 && next == count) {
            /* the last one or two jobs: scalar code is faster than so few lanes */
            int k = 0, l2[2];
            for (int l = 0; l < L; l++)
                if (job[l] >= 0) {
                    for (int r = 0; r < 4; r++)
                        states[4 * job[l] + r] = ls[r * L + l];
                    l2[k++] = l;
                }
            if (k == 2)
                scalar_pair(states + 4 * job[l2[0]], lp[l2[0]], left[l2[0]],
                            states + 4 * job[l2[1]], lp[l2[1]], left[l2[1]]);
            else
                md5mb_compress_scalar(states + 4 * job[l2[0]], lp[l2[0]], left[l2[0]]);
            break;
        }
        uint64_t m = UINT64_MAX;
        for (int l = 0; l < L; l++)
            if (job[l] >= 0 && left[l] < m)
                m = left[l];
        kernel(ls, lp, stride, m);
        for (int l = 0; l < L; l++) {
            if (job[l] < 0)
                continue;
            lp[l] += 64 * m;
            if ((left[l] -= m))
                continue;
            for (int r = 0; r < 4; r++)
                states[4 * job[l] + r] = ls[r * L + l];
            job[l] = -1; lp[l] = dummy_block; stride[l] = 0;
            active--;
        }
    }
}

#endif /* MD5MB_SIMD */

/* ---- entry points ------------------------------------------------------------ */

int md5mb_lanes(void)
{
#ifdef MD5MB_SIMD
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        return 16;
    if (__builtin_cpu_supports("avx2"))
        return 8;
#endif
    return 1;
}

/* As md5mb_compress, on at most `lanes` lanes (0: as many as the CPU has): tests
 * and benchmarks use it to check each instruction set on one machine. */
int md5mb_compress_lanes(int lanes, uint32_t *states, const uint8_t *const *ptrs,
                         const uint64_t *nblocks, int n)
{
    int best = md5mb_lanes();
    if (lanes <= 0 || lanes > best)
        lanes = best;
    struct job local[64], *order;
    int count = sort_jobs(local, &order, nblocks, n);
    if (count < 0) {  /* out of memory: one job at a time */
        for (int j = 0; j < n; j++)
            md5mb_compress_scalar(states + 4 * j, ptrs[j], nblocks[j]);
        return 1;
    }
    int used = lanes >= 16 ? 16 : lanes >= 8 ? 8 : 1;
#ifdef MD5MB_SIMD
    if (used == 16)
        run_lanes(16, md5x16, states, ptrs, order, count);
    else if (used == 8)
        run_lanes(8, md5x8, states, ptrs, order, count);
    else
#endif
        scalar_jobs(states, ptrs, order, count);
    if (order != local)
        free(order);
    return used;
}

int md5mb_compress(uint32_t *states, const uint8_t *const *ptrs, const uint64_t *nblocks, int n)
{
    return md5mb_compress_lanes(0, states, ptrs, nblocks, n);
}
"""
