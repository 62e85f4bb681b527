/*
 * The XTS cipher in the shape QEMU 10's nettle backend calls it: AES-256
 * context pairs (encrypt, decrypt) behind QEMU's wrapper functions (the
 * decrypt wrapper uses the second), one xts_*_message call per LUKS sector
 * (512 bytes, or argv[1]) with its plain64 IV, in place over a 1 MiB
 * buffer, 512 MiB per direction; MiB/s of this thread's CPU time
 * (CLOCK_THREAD_CPUTIME_ID, so other load does not count). Then checks the
 * buffer decrypts back. Without LD_PRELOAD it measures nettle's XTS; with
 * LD_PRELOAD=libisthmus-xts.so the preload (ISTHMUS_XTS_TIER picks a lower
 * tier). Build: cc -O2 -o xts-qemu-shape hv/bench/xts-qemu-shape.c -lnettle
 */
#include <nettle/aes.h>
#include <nettle/xts.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#define SECTOR 512
#define TOTAL (512u << 20)
#define BUF (1u << 20)
static double cpu(void){struct timespec t;clock_gettime(CLOCK_THREAD_CPUTIME_ID,&t);return t.tv_sec+t.tv_nsec/1e9;}
static void enc_w(const void *ctx, size_t l, uint8_t *d, const uint8_t *s){const struct aes256_ctx *k=ctx;aes256_encrypt(&k[0],l,d,s);}
static void dec_w(const void *ctx, size_t l, uint8_t *d, const uint8_t *s){const struct aes256_ctx *k=ctx;aes256_decrypt(&k[1],l,d,s);}
int main(int argc,char**argv){
  unsigned sector = argc>1? atoi(argv[1]):SECTOR;
  uint8_t key[64],iv[16]; uint8_t *buf=aligned_alloc(4096,BUF), *ref=malloc(BUF);
  memset(key,0x5a,64); for(unsigned i=0;i<BUF;i++) buf[i]=i*7+3; memcpy(ref,buf,BUF);
  struct aes256_ctx data[2],twk[2];
  aes256_set_encrypt_key(&data[0],key); aes256_set_decrypt_key(&data[1],key);
  aes256_set_encrypt_key(&twk[0],key+32); aes256_set_decrypt_key(&twk[1],key+32);
  for(int dir=0;dir<2;dir++){
    double t0=cpu();
    for(uint64_t off=0,s=0;off<TOTAL;off+=sector,s++){
      uint8_t *p=buf+off%BUF; memset(iv,0,16); uint64_t sn=(off%BUF)/sector; (void)s; memcpy(iv,&sn,8);
      if(dir==0) xts_encrypt_message(data,twk,enc_w,iv,sector,p,p);
      else xts_decrypt_message(data,twk,dec_w,enc_w,iv,sector,p,p);
    }
    printf("%s %u-byte sectors: %.0f MiB/s (thread CPU)\n",dir?"decrypt":"encrypt",sector,TOTAL/(cpu()-t0)/1048576);
  }
  printf("roundtrip %s\n", memcmp(buf,ref,BUF)==0?"ok":"MISMATCH");
  return 0;
}
