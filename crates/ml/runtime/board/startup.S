/*
 * startup.S -- bare-metal start for the QEMU Cortex-M boards (M4/M7/M55).
 * Owns: the vector table, the reset handler (copy .data from its load
 * address, zero .bss, paint the stack with EB_STACK_PAINT so that the peak
 * can be found afterwards, call main, exit through semihosting with main's
 * return value) and a fault handler that exits with code 3.
 * Linker symbols come from the per-board <board>.ld.
 */
    .syntax unified
    .thumb

    .section .vectors, "a", %progbits
    .align 2
    .global __vectors
__vectors:
    .word __stack_top
    .word Reset_Handler
    .word Fault_Handler      /* NMI */
    .word Fault_Handler      /* HardFault */
    .word Fault_Handler      /* MemManage */
    .word Fault_Handler      /* BusFault */
    .word Fault_Handler      /* UsageFault */
    .word Fault_Handler      /* SecureFault (v8-M) */
    .word 0, 0, 0
    .word Fault_Handler      /* SVC */
    .word Fault_Handler      /* DebugMon */
    .word 0
    .word Fault_Handler      /* PendSV */
    .word SysTick_Handler    /* SysTick */

    .text
    .thumb_func
    .global Reset_Handler
    .type Reset_Handler, %function
Reset_Handler:
    ldr   r0, =__stack_top
    mov   sp, r0
    /* copy .data */
    ldr   r0, =__data_load
    ldr   r1, =__data_start
    ldr   r2, =__data_end
1:  cmp   r1, r2
    bhs   2f
    ldr   r3, [r0], #4
    str   r3, [r1], #4
    b     1b
2:  /* zero .bss */
    ldr   r1, =__bss_start
    ldr   r2, =__bss_end
    movs  r3, #0
3:  cmp   r1, r2
    bhs   4f
    str   r3, [r1], #4
    b     3b
4:  /* paint the whole stack (nothing is on it yet) */
    ldr   r1, =__stack_limit
    ldr   r2, =__stack_top
    ldr   r3, =0x5AA5C33C
5:  cmp   r1, r2
    bhs   6f
    str   r3, [r1], #4
    b     5b
6:  bl    main
    bl    eb_board_exit
7:  b     7b
    .size Reset_Handler, . - Reset_Handler

    .thumb_func
    .weak SysTick_Handler
    .type SysTick_Handler, %function
SysTick_Handler:
    bx    lr

    .thumb_func
    .type Fault_Handler, %function
Fault_Handler:
    movs  r0, #3
    bl    eb_board_exit
8:  b     8b
