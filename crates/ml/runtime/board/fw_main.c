/*
 * fw_main.c -- the firmware's harness on an emulated board (SPEC.md, "`firmware`").
 *
 * Reads EB_SAMPLES inputs from "input.bin" through semihosting into a buffer outside the
 * model's RAM, runs each through the model, counts the instructions of each eb_model_invoke,
 * and writes "output.bin" (the outputs) and "stats.bin" (little-endian u32 words: samples,
 * peak stack bytes, timer overhead, then one instruction count per sample, low word first of
 * a u64). Exit codes: 0 done, 1 semihosting I/O, 2 the model refused.
 *
 * Built with -DEB_MODEL_TRACE (the profile build, one sample), it also writes "nodes.bin": one
 * u32 per node, the instructions from the end of the node before (or the start of the
 * invoke) to the end of this one, less one timer read.
 */
#include <string.h>

#include "board.h"
#include "eb_model.h"

#ifndef EB_SAMPLES
#error "compile with -DEB_SAMPLES=N"
#endif

#define EB_IN_TOTAL ((size_t)EB_SAMPLES * EB_MODEL_INPUT_BYTES)
#define EB_OUT_TOTAL ((size_t)EB_SAMPLES * EB_MODEL_OUTPUT_BYTES)

static int8_t eb_io_in[EB_IN_TOTAL] __attribute__((section(".bss.eb_iobuf_in")));
static int8_t eb_io_out[EB_OUT_TOTAL] __attribute__((section(".bss.eb_iobuf_out")));
static uint32_t eb_stats[3 + 2 * EB_SAMPLES] __attribute__((section(".bss.eb_iobuf_stats")));

#ifdef EB_MODEL_TRACE
static uint64_t eb_trace_last;
static uint64_t eb_trace_overhead;
static uint32_t eb_node_insns[EB_MODEL_NODES];

void eb_model_trace(int32_t node, const int8_t *data, int32_t n)
{
    const uint64_t now = eb_instructions();
    const uint64_t d = now - eb_trace_last;
    (void)data;
    (void)n;
    if (node >= 0 && node < EB_MODEL_NODES) {
        eb_node_insns[node] = (uint32_t)(d > eb_trace_overhead ? d - eb_trace_overhead : 0);
    }
    eb_trace_last = eb_instructions();
}
#endif

static int write_file(const char *name, const void *data, size_t n)
{
    const int fd = sh_open(name, 5);
    if (fd < 0) {
        return 1;
    }
    if (sh_write(fd, data, n) != 0) {
        return 1;
    }
    return sh_close(fd) != 0;
}

int main(void)
{
    int fd;
    size_t s;
    uint64_t overhead;

    eb_timer_init();
    overhead = eb_timer_overhead();
    if (eb_model_init() != 0) {
        sh_puts("eb_model_init refused\n");
        return 2;
    }
    fd = sh_open("input.bin", 1);
    if (fd < 0 || sh_flen(fd) != (long)EB_IN_TOTAL || sh_read(fd, eb_io_in, EB_IN_TOTAL) != 0) {
        sh_puts("cannot read input.bin\n");
        return 1;
    }
    sh_close(fd);
    for (s = 0; s < EB_SAMPLES; ++s) {
        uint64_t t0, t1, n;
        int rc;
        memcpy(eb_model_input(), eb_io_in + s * EB_MODEL_INPUT_BYTES, EB_MODEL_INPUT_BYTES);
        t0 = eb_instructions();
#ifdef EB_MODEL_TRACE
        eb_trace_overhead = overhead;
        eb_trace_last = t0;
#endif
        rc = eb_model_invoke();
        t1 = eb_instructions();
        if (rc != 0) {
            sh_puts("eb_model_invoke refused\n");
            return 2;
        }
        n = t1 - t0 > overhead ? t1 - t0 - overhead : 0;
        eb_stats[3 + 2 * s] = (uint32_t)(n & 0xFFFFFFFFu);
        eb_stats[4 + 2 * s] = (uint32_t)(n >> 32);
        memcpy(eb_io_out + s * EB_MODEL_OUTPUT_BYTES, eb_model_output(), EB_MODEL_OUTPUT_BYTES);
    }
    eb_stats[0] = (uint32_t)EB_SAMPLES;
    eb_stats[1] = (uint32_t)eb_stack_peak();
    eb_stats[2] = (uint32_t)overhead;
    if (write_file("output.bin", eb_io_out, EB_OUT_TOTAL) != 0 ||
        write_file("stats.bin", eb_stats, sizeof eb_stats) != 0) {
        sh_puts("cannot write the results\n");
        return 1;
    }
#ifdef EB_MODEL_TRACE
    if (write_file("nodes.bin", eb_node_insns, sizeof eb_node_insns) != 0) {
        sh_puts("cannot write the profile\n");
        return 1;
    }
#endif
    return 0;
}
