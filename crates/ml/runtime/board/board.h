/*
 * board.h -- the board services the firmware needs: ARM semihosting file
 * I/O and exit, an instruction counter, and the stack high-water mark.
 * Implemented in board.c for mps2-an500 (Cortex-M7), mps2-an386 (Cortex-M4)
 * and mps3-an547 (Cortex-M55) as QEMU models them (EB_BOARD_* macro).
 */
#ifndef EB_BOARD_H
#define EB_BOARD_H
#include <stddef.h>
#include <stdint.h>

#define EB_STACK_PAINT 0x5AA5C33Cu

/* Semihosting (SYS_OPEN modes: 1 = "rb", 5 = "wb"). */
int sh_open(const char *name, int mode);
int sh_close(int fd);
long sh_flen(int fd);
/* Return the number of bytes NOT transferred (0 = all), as the spec says. */
long sh_read(int fd, void *buf, size_t n);
long sh_write(int fd, const void *buf, size_t n);
void sh_puts(const char *s);
void eb_board_exit(int code);

/* Instruction counter: under `qemu -icount shift=0` every instruction
 * advances virtual time by 1 ns; the board timer counts that time. */
void eb_timer_init(void);
uint64_t eb_instructions(void);
/* Instructions that one eb_instructions() pair costs (subtracted). */
uint64_t eb_timer_overhead(void);

/* Peak stack use in bytes (scan of the painted stack). */
size_t eb_stack_peak(void);
size_t eb_stack_size(void);
#endif
