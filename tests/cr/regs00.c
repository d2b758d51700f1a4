/* regs00: values held in registers while the task is frozen.
 * Two threads (main and a worker) each run an assembly loop that loads known
 * values into general-purpose registers (callee-saved ones included), xmm0-15
 * (xmm0-7 in 32-bit), the upper halves of ymm when AVX is enabled, x87 st0/st1,
 * a non-default x87 control word and a non-default MXCSR (round toward zero,
 * flush to zero). The loop spins on a flag in memory (with `pause`, and a 1 ms
 * nanosleep every ~65536 spins, so a dump finds it in user mode or in a
 * syscall). Once SIGUSR1 set the flag, the loop stores every register and the C
 * code compares them with the loaded values. `ready` is written only after
 * both threads have loaded their registers. */
#define _GNU_SOURCE
#include <cpuid.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "workload.h"

struct regblock {
  uint64_t gpr_in[16];
  uint64_t gpr_out[16];
  uint8_t vec_in[16][32];
  uint8_t vec_out[16][32];
  uint8_t st_in[2][16];
  uint8_t st_out[2][16];
  uint32_t mxcsr_in, mxcsr_out;
  uint16_t fcw_in, fcw_out;
  uint32_t avx;
  uint64_t flag_addr;
  uint32_t spins, max_spins;
  uint32_t loaded, pad;
};

#define OFF_GPR_IN 0
#define OFF_GPR_OUT 128
#define OFF_VEC_IN 256
#define OFF_VEC_OUT 768
#define OFF_ST_IN 1280
#define OFF_ST_OUT 1312
#define OFF_MXCSR_IN 1344
#define OFF_MXCSR_OUT 1348
#define OFF_FCW_IN 1352
#define OFF_FCW_OUT 1354
#define OFF_AVX 1356
#define OFF_FLAG 1360
#define OFF_SPINS 1368
#define OFF_MAX_SPINS 1372
#define OFF_LOADED 1376

_Static_assert(offsetof(struct regblock, gpr_out) == OFF_GPR_OUT, "layout");
_Static_assert(offsetof(struct regblock, vec_in) == OFF_VEC_IN, "layout");
_Static_assert(offsetof(struct regblock, vec_out) == OFF_VEC_OUT, "layout");
_Static_assert(offsetof(struct regblock, st_in) == OFF_ST_IN, "layout");
_Static_assert(offsetof(struct regblock, st_out) == OFF_ST_OUT, "layout");
_Static_assert(offsetof(struct regblock, mxcsr_in) == OFF_MXCSR_IN, "layout");
_Static_assert(offsetof(struct regblock, mxcsr_out) == OFF_MXCSR_OUT, "layout");
_Static_assert(offsetof(struct regblock, fcw_in) == OFF_FCW_IN, "layout");
_Static_assert(offsetof(struct regblock, fcw_out) == OFF_FCW_OUT, "layout");
_Static_assert(offsetof(struct regblock, avx) == OFF_AVX, "layout");
_Static_assert(offsetof(struct regblock, flag_addr) == OFF_FLAG, "layout");
_Static_assert(offsetof(struct regblock, spins) == OFF_SPINS, "layout");
_Static_assert(offsetof(struct regblock, max_spins) == OFF_MAX_SPINS, "layout");
_Static_assert(offsetof(struct regblock, loaded) == OFF_LOADED, "layout");

#define S_(x) #x
#define S(x) S_(x)
/* Top-level asm is basic asm: a single % names a register. BASEREG is expanded
 * where VLOAD/VSTORE are used. */
#define V(op, off, i, reg) op " " S(off) "+" #i "*32(" BASEREG "), %" reg #i "\n"
#define VS(op, off, i, reg) op " %" reg #i ", " S(off) "+" #i "*32(" BASEREG ")\n"

void regs_spin(struct regblock* b);

#if defined(__x86_64__)
#define NGPR 10
#define NVEC 16
static const char* const gpr_names[NGPR] = {"rbx", "rbp", "r12", "r13", "r14",
                                            "r15", "rdx", "r8",  "r9",  "r10"};
/* clang-format off */
#define VLOAD(op, reg) \
  V(op, OFF_VEC_IN, 0, reg) \
  V(op, OFF_VEC_IN, 1, reg) \
  V(op, OFF_VEC_IN, 2, reg) \
  V(op, OFF_VEC_IN, 3, reg) \
  V(op, OFF_VEC_IN, 4, reg) \
  V(op, OFF_VEC_IN, 5, reg) \
  V(op, OFF_VEC_IN, 6, reg) \
  V(op, OFF_VEC_IN, 7, reg) \
  V(op, OFF_VEC_IN, 8, reg) \
  V(op, OFF_VEC_IN, 9, reg) \
  V(op, OFF_VEC_IN, 10, reg) \
  V(op, OFF_VEC_IN, 11, reg) \
  V(op, OFF_VEC_IN, 12, reg) \
  V(op, OFF_VEC_IN, 13, reg) \
  V(op, OFF_VEC_IN, 14, reg) \
  V(op, OFF_VEC_IN, 15, reg)
#define VSTORE(op, reg) \
  VS(op, OFF_VEC_OUT, 0, reg) \
  VS(op, OFF_VEC_OUT, 1, reg) \
  VS(op, OFF_VEC_OUT, 2, reg) \
  VS(op, OFF_VEC_OUT, 3, reg) \
  VS(op, OFF_VEC_OUT, 4, reg) \
  VS(op, OFF_VEC_OUT, 5, reg) \
  VS(op, OFF_VEC_OUT, 6, reg) \
  VS(op, OFF_VEC_OUT, 7, reg) \
  VS(op, OFF_VEC_OUT, 8, reg) \
  VS(op, OFF_VEC_OUT, 9, reg) \
  VS(op, OFF_VEC_OUT, 10, reg) \
  VS(op, OFF_VEC_OUT, 11, reg) \
  VS(op, OFF_VEC_OUT, 12, reg) \
  VS(op, OFF_VEC_OUT, 13, reg) \
  VS(op, OFF_VEC_OUT, 14, reg) \
  VS(op, OFF_VEC_OUT, 15, reg)
/* clang-format on */
#endif

#if defined(__x86_64__)
/* Stack frame after the prologue: 0 timespec (16), 16 block, 24 caller FCW,
 * 28 caller MXCSR. rax, rcx, rsi, rdi and r11 are scratch (syscall clobbers). */
__asm__(
    ".text\n"
    ".globl regs_spin\n"
    ".type regs_spin,@function\n"
    ".p2align 4\n"
    "regs_spin:\n"
    "push %rbx\n"
    "push %rbp\n"
    "push %r12\n"
    "push %r13\n"
    "push %r14\n"
    "push %r15\n"
    "sub $40, %rsp\n"
    "mov %rdi, 16(%rsp)\n"
    "movq $0, 0(%rsp)\n"
    "movq $1000000, 8(%rsp)\n"
    "fnstcw 24(%rsp)\n"
    "stmxcsr 28(%rsp)\n"
    "fldcw " S(OFF_FCW_IN) "(%rdi)\n"
    "ldmxcsr " S(OFF_MXCSR_IN) "(%rdi)\n"
    "fldt " S(OFF_ST_IN) "+16(%rdi)\n"
    "fldt " S(OFF_ST_IN) "(%rdi)\n"
    "cmpl $0, " S(OFF_AVX) "(%rdi)\n"
    "je 1f\n"
#define BASEREG "%rdi"
    VLOAD("vmovdqu", "ymm")
    "jmp 2f\n"
    "1:\n"
    VLOAD("movdqu", "xmm")
    "2:\n"
    "mov " S(OFF_GPR_IN) "+0(%rdi), %rbx\n"
    "mov " S(OFF_GPR_IN) "+8(%rdi), %rbp\n"
    "mov " S(OFF_GPR_IN) "+16(%rdi), %r12\n"
    "mov " S(OFF_GPR_IN) "+24(%rdi), %r13\n"
    "mov " S(OFF_GPR_IN) "+32(%rdi), %r14\n"
    "mov " S(OFF_GPR_IN) "+40(%rdi), %r15\n"
    "mov " S(OFF_GPR_IN) "+48(%rdi), %rdx\n"
    "mov " S(OFF_GPR_IN) "+56(%rdi), %r8\n"
    "mov " S(OFF_GPR_IN) "+64(%rdi), %r9\n"
    "mov " S(OFF_GPR_IN) "+72(%rdi), %r10\n"
    "mov %rdi, %rcx\n"
    "movl $1, " S(OFF_LOADED) "(%rcx)\n"
    "3:\n"
    "mov $65536, %esi\n"
    "4:\n"
    "mov " S(OFF_FLAG) "(%rcx), %rax\n"
    "mov (%rax), %eax\n"
    "test %eax, %eax\n"
    "jnz 5f\n"
    "pause\n"
    "dec %esi\n"
    "jnz 4b\n"
    "incl " S(OFF_SPINS) "(%rcx)\n"
    "mov " S(OFF_SPINS) "(%rcx), %eax\n"
    "cmp " S(OFF_MAX_SPINS) "(%rcx), %eax\n"
    "jae 5f\n"
    "mov $35, %eax\n" /* nanosleep(&ts, NULL) */
    "mov %rsp, %rdi\n"
    "xor %esi, %esi\n"
    "syscall\n"
    "mov 16(%rsp), %rcx\n"
    "jmp 3b\n"
    "5:\n"
    "mov %rbx, " S(OFF_GPR_OUT) "+0(%rcx)\n"
    "mov %rbp, " S(OFF_GPR_OUT) "+8(%rcx)\n"
    "mov %r12, " S(OFF_GPR_OUT) "+16(%rcx)\n"
    "mov %r13, " S(OFF_GPR_OUT) "+24(%rcx)\n"
    "mov %r14, " S(OFF_GPR_OUT) "+32(%rcx)\n"
    "mov %r15, " S(OFF_GPR_OUT) "+40(%rcx)\n"
    "mov %rdx, " S(OFF_GPR_OUT) "+48(%rcx)\n"
    "mov %r8, " S(OFF_GPR_OUT) "+56(%rcx)\n"
    "mov %r9, " S(OFF_GPR_OUT) "+64(%rcx)\n"
    "mov %r10, " S(OFF_GPR_OUT) "+72(%rcx)\n"
    "cmpl $0, " S(OFF_AVX) "(%rcx)\n"
    "je 6f\n"
#undef BASEREG
#define BASEREG "%rcx"
    VSTORE("vmovdqu", "ymm")
    "vzeroupper\n"
    "jmp 7f\n"
    "6:\n"
    VSTORE("movdqu", "xmm")
    "7:\n"
    "stmxcsr " S(OFF_MXCSR_OUT) "(%rcx)\n"
    "fnstcw " S(OFF_FCW_OUT) "(%rcx)\n"
    "fstpt " S(OFF_ST_OUT) "(%rcx)\n"
    "fstpt " S(OFF_ST_OUT) "+16(%rcx)\n"
    "fldcw 24(%rsp)\n"
    "ldmxcsr 28(%rsp)\n"
    "add $40, %rsp\n"
    "pop %r15\n"
    "pop %r14\n"
    "pop %r13\n"
    "pop %r12\n"
    "pop %rbp\n"
    "pop %rbx\n"
    "ret\n"
    ".size regs_spin, .-regs_spin\n");

#elif defined(__i386__)
#define NGPR 5
#define NVEC 8
static const char* const gpr_names[NGPR] = {"ebx", "ebp", "esi", "edi", "edx"};
/* clang-format off */
#define VLOAD(op, reg) \
  V(op, OFF_VEC_IN, 0, reg) \
  V(op, OFF_VEC_IN, 1, reg) \
  V(op, OFF_VEC_IN, 2, reg) \
  V(op, OFF_VEC_IN, 3, reg) \
  V(op, OFF_VEC_IN, 4, reg) \
  V(op, OFF_VEC_IN, 5, reg) \
  V(op, OFF_VEC_IN, 6, reg) \
  V(op, OFF_VEC_IN, 7, reg)
#define VSTORE(op, reg) \
  VS(op, OFF_VEC_OUT, 0, reg) \
  VS(op, OFF_VEC_OUT, 1, reg) \
  VS(op, OFF_VEC_OUT, 2, reg) \
  VS(op, OFF_VEC_OUT, 3, reg) \
  VS(op, OFF_VEC_OUT, 4, reg) \
  VS(op, OFF_VEC_OUT, 5, reg) \
  VS(op, OFF_VEC_OUT, 6, reg) \
  VS(op, OFF_VEC_OUT, 7, reg)
/* clang-format on */
/* Stack frame after the prologue: 0 timespec (8), 8 block, 12 spin counter,
 * 16 caller FCW, 20 caller MXCSR; the argument is at 48(%esp). eax and ecx are
 * scratch; ebx is pushed around int $0x80 (it carries the syscall argument). */
__asm__(
    ".text\n"
    ".globl regs_spin\n"
    ".type regs_spin,@function\n"
    ".p2align 4\n"
    "regs_spin:\n"
    "push %ebp\n"
    "push %ebx\n"
    "push %esi\n"
    "push %edi\n"
    "sub $28, %esp\n"
    "mov 48(%esp), %eax\n"
    "mov %eax, 8(%esp)\n"
    "movl $0, 0(%esp)\n"
    "movl $1000000, 4(%esp)\n"
    "fnstcw 16(%esp)\n"
    "stmxcsr 20(%esp)\n"
    "fldcw " S(OFF_FCW_IN) "(%eax)\n"
    "ldmxcsr " S(OFF_MXCSR_IN) "(%eax)\n"
    "fldt " S(OFF_ST_IN) "+16(%eax)\n"
    "fldt " S(OFF_ST_IN) "(%eax)\n"
    "cmpl $0, " S(OFF_AVX) "(%eax)\n"
    "je 1f\n"
#define BASEREG "%eax"
    VLOAD("vmovdqu", "ymm")
    "jmp 2f\n"
    "1:\n"
    VLOAD("movdqu", "xmm")
    "2:\n"
    "mov " S(OFF_GPR_IN) "+0(%eax), %ebx\n"
    "mov " S(OFF_GPR_IN) "+8(%eax), %ebp\n"
    "mov " S(OFF_GPR_IN) "+16(%eax), %esi\n"
    "mov " S(OFF_GPR_IN) "+24(%eax), %edi\n"
    "mov " S(OFF_GPR_IN) "+32(%eax), %edx\n"
    "mov %eax, %ecx\n"
    "movl $1, " S(OFF_LOADED) "(%ecx)\n"
    "3:\n"
    "movl $65536, 12(%esp)\n"
    "4:\n"
    "mov " S(OFF_FLAG) "(%ecx), %eax\n"
    "mov (%eax), %eax\n"
    "test %eax, %eax\n"
    "jnz 5f\n"
    "pause\n"
    "decl 12(%esp)\n"
    "jnz 4b\n"
    "incl " S(OFF_SPINS) "(%ecx)\n"
    "mov " S(OFF_SPINS) "(%ecx), %eax\n"
    "cmp " S(OFF_MAX_SPINS) "(%ecx), %eax\n"
    "jae 5f\n"
    "push %ebx\n"
    "lea 4(%esp), %ebx\n" /* nanosleep(&ts, NULL) */
    "xor %ecx, %ecx\n"
    "mov $162, %eax\n"
    "int $0x80\n"
    "pop %ebx\n"
    "mov 8(%esp), %ecx\n"
    "jmp 3b\n"
    "5:\n"
    "mov %ebx, " S(OFF_GPR_OUT) "+0(%ecx)\n"
    "mov %ebp, " S(OFF_GPR_OUT) "+8(%ecx)\n"
    "mov %esi, " S(OFF_GPR_OUT) "+16(%ecx)\n"
    "mov %edi, " S(OFF_GPR_OUT) "+24(%ecx)\n"
    "mov %edx, " S(OFF_GPR_OUT) "+32(%ecx)\n"
    "cmpl $0, " S(OFF_AVX) "(%ecx)\n"
    "je 6f\n"
#undef BASEREG
#define BASEREG "%ecx"
    VSTORE("vmovdqu", "ymm")
    "vzeroupper\n"
    "jmp 7f\n"
    "6:\n"
    VSTORE("movdqu", "xmm")
    "7:\n"
    "stmxcsr " S(OFF_MXCSR_OUT) "(%ecx)\n"
    "fnstcw " S(OFF_FCW_OUT) "(%ecx)\n"
    "fstpt " S(OFF_ST_OUT) "(%ecx)\n"
    "fstpt " S(OFF_ST_OUT) "+16(%ecx)\n"
    "fldcw 16(%esp)\n"
    "ldmxcsr 20(%esp)\n"
    "add $28, %esp\n"
    "pop %edi\n"
    "pop %esi\n"
    "pop %ebx\n"
    "pop %ebp\n"
    "ret\n"
    ".size regs_spin, .-regs_spin\n");
#else
#error "regs00 is x86 only"
#endif

static struct regblock blk[2];
static const char* const who[2] = {"main", "worker"};

static int have_avx(char* why, size_t n) {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) {
    snprintf(why, n, "cpuid leaf 1 is not available");
    return 0;
  }
  if (!(c & (1u << 28))) {
    snprintf(why, n, "the CPU has no AVX (cpuid.1:ecx bit 28)");
    return 0;
  }
  if (!(c & (1u << 27))) {
    snprintf(why, n, "the OS did not enable XSAVE (cpuid.1:ecx OSXSAVE clear)");
    return 0;
  }
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if ((lo & 6) != 6) {
    snprintf(why, n, "XCR0 = 0x%x: the OS does not save SSE+AVX state", lo);
    return 0;
  }
  return 1;
}

static void fill(struct regblock* b, int idx, int avx) {
  memset(b, 0, sizeof *b);
  for (int i = 0; i < 16; i++)
    b->gpr_in[i] = 0x0123456789abcdefULL ^ ((uint64_t)(i + 1 + idx * 16) * 0x1010101001010101ULL);
  wl_pattern(b->vec_in, sizeof b->vec_in, 100 + (uint32_t)idx);
  long double st0 = idx ? -2.718281828459045235L : 3.14159265358979323846L;
  long double st1 = idx ? 1e-300L : -12345.678L;
  memcpy(b->st_in[0], &st0, 10);
  memcpy(b->st_in[1], &st1, 10);
  b->mxcsr_in = idx ? 0xbf80 : 0xff80; /* FZ, rounding toward 0 (main) / +inf (worker) */
  b->fcw_in = idx ? 0x077f : 0x0b7f;   /* x87 rounding down (worker) / up (main) */
  b->avx = (uint32_t)avx;
  b->flag_addr = (uint64_t)(uintptr_t)&wl_usr1;
  b->max_spins = 60000; /* gives up after a few minutes of waiting */
}

static void hex(char* out, size_t n, const uint8_t* p, size_t len) {
  size_t o = 0;
  for (size_t i = 0; i < len && o + 3 < n; i++) o += (size_t)snprintf(out + o, n - o, "%02x", p[i]);
}

static void compare(struct wl_check* c, int idx) {
  struct regblock* b = &blk[idx];
  const char* t = who[idx];
  if (!wl_check(c, wl_usr1, "%s: gave up waiting after %u sleeps", t, b->spins)) return;
  for (int i = 0; i < NGPR; i++) {
    uint64_t want = b->gpr_in[i], got = b->gpr_out[i];
    if (sizeof(void*) == 4) want &= 0xffffffffu;
    wl_check(c, got == want, "%s: %s = 0x%llx, want 0x%llx", t, gpr_names[i],
             (unsigned long long)got, (unsigned long long)want);
  }
  for (int i = 0; i < NVEC; i++) {
    char g[80], w[80];
    if (memcmp(b->vec_out[i], b->vec_in[i], 16) != 0) {
      hex(g, sizeof g, b->vec_out[i], 16);
      hex(w, sizeof w, b->vec_in[i], 16);
      wl_check(c, 0, "%s: xmm%d = %s, want %s", t, i, g, w);
    }
    if (b->avx && memcmp(b->vec_out[i] + 16, b->vec_in[i] + 16, 16) != 0) {
      hex(g, sizeof g, b->vec_out[i] + 16, 16);
      hex(w, sizeof w, b->vec_in[i] + 16, 16);
      wl_check(c, 0, "%s: ymm%d upper half = %s, want %s", t, i, g, w);
    }
  }
  for (int i = 0; i < 2; i++) {
    char g[40], w[40];
    if (memcmp(b->st_out[i], b->st_in[i], 10) != 0) {
      hex(g, sizeof g, b->st_out[i], 10);
      hex(w, sizeof w, b->st_in[i], 10);
      wl_check(c, 0, "%s: st%d = %s, want %s", t, i, g, w);
    }
  }
  wl_check(c, b->mxcsr_out == b->mxcsr_in, "%s: mxcsr = 0x%x, want 0x%x", t, b->mxcsr_out,
           b->mxcsr_in);
  wl_check(c, b->fcw_out == b->fcw_in, "%s: x87 control word = 0x%x, want 0x%x", t, b->fcw_out,
           b->fcw_in);
}

static void* worker(void* arg) {
  (void)arg;
  regs_spin(&blk[1]);
  return NULL;
}

static void* readier(void* arg) {
  (void)arg;
  while (!atomic_load((_Atomic uint32_t*)&blk[0].loaded) ||
         !atomic_load((_Atomic uint32_t*)&blk[1].loaded))
    wl_sleep_ms(1);
  wl_ready("main");
  wl_wait();
  return NULL;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  char why[160] = "";
  int avx = have_avx(why, sizeof why);
  if (avx)
    wl_log("AVX enabled: checking ymm0-%d (full 256 bits)", NVEC - 1);
  else
    wl_log("falling back to SSE only (xmm0-%d): %s", NVEC - 1, why);
  fill(&blk[0], 0, avx);
  fill(&blk[1], 1, avx);
  pthread_t tw, tr;
  if (pthread_create(&tw, NULL, worker, NULL) != 0) wl_die("main", "pthread_create");
  if (pthread_create(&tr, NULL, readier, NULL) != 0) wl_die("main", "pthread_create");
  regs_spin(&blk[0]);
  pthread_join(tw, NULL);
  pthread_join(tr, NULL);
  struct wl_check c;
  wl_check_init(&c);
  compare(&c, 0);
  compare(&c, 1);
  return wl_check_result("main", &c);
}
