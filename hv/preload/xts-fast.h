/* Fused XTS-AES fast path of libisthmus-xts (xts-fast.c). */
#ifndef ISTHMUS_XTS_FAST_H
#define ISTHMUS_XTS_FAST_H

#include <stddef.h>
#include <stdint.h>

/* nettle-types.h: the cipher function type nettle's XTS is given (declared
 * here so the library builds without nettle-dev). */
typedef void nettle_cipher_func(const void *ctx, size_t length, uint8_t *dst, const uint8_t *src);

/* XTS over `length` bytes (a whole number of 16-byte blocks) with first
 * tweak t0 = E(tweak key, IV), when f is AES in a layout this code
 * recognises (checked on the first block against f itself) and the CPU has
 * AES-NI: returns 1 with dst written. Returns 0 without touching dst
 * otherwise (the caller then runs its generic path). */
int isthmus_xts_fast(const void *ctx, nettle_cipher_func *f, int decrypt, const uint8_t t0[16], size_t length,
                     uint8_t *dst, const uint8_t *src);

/* t0 = E(tweak key, iv): f's own result, or this code's AES-NI on f's
 * round keys once this thread has verified f's layout for ctx. Call
 * isthmus_xts_fast for the message right after it, from the same frame:
 * that call wipes the stack both used. */
void isthmus_xts_tweak(const void *ctx, nettle_cipher_func *f, const uint8_t iv[16], uint8_t t0[16]);

/* "vaes", "aesni" or "generic": the tier this process runs. */
const char *isthmus_xts_fast_tier(void);

#endif
