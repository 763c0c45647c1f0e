/*
 * board.c -- semihosting, instruction counter and stack scan for the QEMU
 * Cortex-M boards.  Select the board with -DEB_BOARD_AN500, -DEB_BOARD_AN386
 * or -DEB_BOARD_AN547.  Timer choice (SPEC.md, "`firmware`"):
 *  - mps2-an500 / mps2-an386: CMSDK APB timer 0 at 0x40000000, clocked at
 *    the 25 MHz SYSCLK: 1 tick = 40 ns = 40 instructions at -icount shift=0.
 *  - mps3-an547: the SSE-300 has no fast CMSDK timer in QEMU (its only CMSDK
 *    timer is the 32 kHz S32K one); we read the SSE system counter
 *    (CNTCV in its status frame at 0x58101000, enabled through CNTCR at
 *    0x58100000), which counts at 32 MHz: 1 tick = 31.25 instructions.
 */
#include "board.h"

/* ---------------------------------------------------------------- semihosting */
#define SYS_OPEN 0x01
#define SYS_CLOSE 0x02
#define SYS_WRITE0 0x04
#define SYS_WRITE 0x05
#define SYS_READ 0x06
#define SYS_FLEN 0x0C
#define SYS_EXIT 0x18
#define SYS_EXIT_EXTENDED 0x20
#define ADP_Stopped_ApplicationExit 0x20026

static int sh_call(int op, const void *arg)
{
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static size_t eb_strlen(const char *s)
{
    size_t n = 0;
    while (s[n]) {
        ++n;
    }
    return n;
}

int sh_open(const char *name, int mode)
{
    uint32_t a[3];
    a[0] = (uint32_t)(uintptr_t)name;
    a[1] = (uint32_t)mode;
    a[2] = (uint32_t)eb_strlen(name);
    return sh_call(SYS_OPEN, a);
}

int sh_close(int fd)
{
    uint32_t a[1];
    a[0] = (uint32_t)fd;
    return sh_call(SYS_CLOSE, a);
}

long sh_flen(int fd)
{
    uint32_t a[1];
    a[0] = (uint32_t)fd;
    return sh_call(SYS_FLEN, a);
}

long sh_read(int fd, void *buf, size_t n)
{
    uint32_t a[3];
    a[0] = (uint32_t)fd;
    a[1] = (uint32_t)(uintptr_t)buf;
    a[2] = (uint32_t)n;
    return sh_call(SYS_READ, a);
}

long sh_write(int fd, const void *buf, size_t n)
{
    uint32_t a[3];
    a[0] = (uint32_t)fd;
    a[1] = (uint32_t)(uintptr_t)buf;
    a[2] = (uint32_t)n;
    return sh_call(SYS_WRITE, a);
}

void sh_puts(const char *s)
{
    sh_call(SYS_WRITE0, s);
}

void eb_board_exit(int code)
{
    uint32_t a[2];
    a[0] = ADP_Stopped_ApplicationExit;
    a[1] = (uint32_t)code;
    sh_call(SYS_EXIT_EXTENDED, a);
    /* fallback for hosts without the extended call: 0 / non-zero only */
    sh_call(SYS_EXIT, code == 0 ? (const void *)ADP_Stopped_ApplicationExit : (const void *)0x20024);
    for (;;) {
    }
}

/* -------------------------------------------------------------------- timer */
#define REG(a) (*(volatile uint32_t *)(uintptr_t)(a))

#if defined(EB_BOARD_AN547)
#define CNT_CONTROL 0x58100000u /* CNTCR, secure control frame */
#define CNT_STATUS 0x58101000u  /* CNTCV_LO / CNTCV_HI */
void eb_timer_init(void)
{
    REG(CNT_CONTROL) = 1u; /* EN */
}
static uint64_t eb_ticks(void)
{
    uint32_t hi, lo, hi2;
    do {
        hi = REG(CNT_STATUS + 4);
        lo = REG(CNT_STATUS);
        hi2 = REG(CNT_STATUS + 4);
    } while (hi != hi2);
    return ((uint64_t)hi << 32) | lo;
}
/* 32 MHz: 31.25 ns per tick */
#define TICKS_TO_INSNS(t) (((t) * 125u) / 4u)
#else
#define TIMER0 0x40000000u /* CMSDK APB timer: CTRL, VALUE, RELOAD */
static uint32_t last_value;
static uint64_t ticks_acc;
void eb_timer_init(void)
{
    REG(TIMER0 + 0x0) = 0;
    REG(TIMER0 + 0x8) = 0xFFFFFFFFu;
    REG(TIMER0 + 0x4) = 0xFFFFFFFFu;
    REG(TIMER0 + 0x0) = 1u; /* enable, no interrupt */
    last_value = REG(TIMER0 + 0x4);
    ticks_acc = 0;
}
static uint64_t eb_ticks(void)
{
    /* down counter: elapsed = last - now (mod 2^32) */
    const uint32_t v = REG(TIMER0 + 0x4);
    ticks_acc += (uint32_t)(last_value - v);
    last_value = v;
    return ticks_acc;
}
/* 25 MHz: 40 ns per tick */
#define TICKS_TO_INSNS(t) ((t) * 40u)
#endif

uint64_t eb_instructions(void)
{
    return TICKS_TO_INSNS(eb_ticks());
}

uint64_t eb_timer_overhead(void)
{
    uint64_t best = ~(uint64_t)0;
    int i;
    for (i = 0; i < 8; ++i) {
        const uint64_t a = eb_instructions();
        const uint64_t b = eb_instructions();
        if (b - a < best) {
            best = b - a;
        }
    }
    return best;
}

/* -------------------------------------------------------------------- stack */
extern uint32_t __stack_limit[];
extern uint32_t __stack_top[];

size_t eb_stack_peak(void)
{
    const uint32_t *p = __stack_limit;
    while (p < __stack_top && *p == EB_STACK_PAINT) {
        ++p;
    }
    return (size_t)((const uint8_t *)__stack_top - (const uint8_t *)p);
}

size_t eb_stack_size(void)
{
    return (size_t)((const uint8_t *)__stack_top - (const uint8_t *)__stack_limit);
}
