/*
 * Cipher speed on this host for one core, in the shape QEMU's LUKS code
 * calls it: one call per 512-byte sector with its own plain64 IV.
 *
 *   nettle_xts   nettle 3.8 xts_encrypt_message + AES-256 (what Debian's
 *                QEMU 10 uses: it is built with nettle as its cipher backend)
 *   gnutls_xts   gnutls AES-256-XTS (QEMU's gnutls backend, not used by
 *                Debian's build)
 *   aes_ecb      nettle AES-256 over 512 bytes in one call (what AES-NI
 *                gives when the cipher is not fed 16 bytes at a time)
 *
 * Prints one "name MiB/s" line each. Built and run by luks-layouts.sh.
 */
#include <gnutls/crypto.h>
#include <nettle/aes.h>
#include <nettle/xts.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SECTOR 512
#define TOTAL (256u << 20)
#define BUF (1u << 20)

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void iv_of(uint8_t iv[16], uint64_t sector)
{
    memset(iv, 0, 16);
    memcpy(iv, &sector, 8); /* plain64: little-endian sector number */
}

int main(void)
{
    uint8_t key[64], iv[16];
    uint8_t *buf = malloc(BUF);
    if (!buf) {
        return 1;
    }
    memset(key, 0x5a, sizeof key);
    memset(buf, 1, BUF);

    struct aes256_ctx data, tweak;
    aes256_set_encrypt_key(&data, key);
    aes256_set_encrypt_key(&tweak, key + 32);
    double t0 = now();
    for (uint64_t off = 0, s = 0; off < TOTAL; off += SECTOR, s++) {
        uint8_t *p = buf + off % BUF;
        iv_of(iv, s);
        xts_encrypt_message(&data, &tweak, (nettle_cipher_func *)aes256_encrypt, iv, SECTOR, p, p);
    }
    printf("nettle_xts %.0f\n", TOTAL / (now() - t0) / 1048576);

    gnutls_cipher_hd_t h;
    gnutls_datum_t k = {key, 64};
    if (gnutls_cipher_init(&h, GNUTLS_CIPHER_AES_256_XTS, &k, NULL) != 0) {
        fprintf(stderr, "gnutls has no AES-256-XTS\n");
        return 1;
    }
    t0 = now();
    for (uint64_t off = 0, s = 0; off < TOTAL; off += SECTOR, s++) {
        uint8_t *p = buf + off % BUF;
        iv_of(iv, s);
        gnutls_cipher_set_iv(h, iv, 16);
        if (gnutls_cipher_encrypt2(h, p, SECTOR, p, SECTOR) != 0) {
            return 1;
        }
    }
    printf("gnutls_xts %.0f\n", TOTAL / (now() - t0) / 1048576);
    gnutls_cipher_deinit(h);

    t0 = now();
    for (uint64_t off = 0; off < TOTAL; off += SECTOR) {
        uint8_t *p = buf + off % BUF;
        aes256_encrypt(&data, SECTOR, p, p);
    }
    printf("aes_ecb %.0f\n", TOTAL / (now() - t0) / 1048576);
    free(buf);
    return 0;
}
