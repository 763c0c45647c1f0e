/*
 * host_main.c -- runs the generated model on this host (SPEC.md, "`runtime`").
 *
 *   host INPUT OUTPUT            every sample of INPUT (samples x EB_MODEL_INPUT_BYTES int8)
 *                                through the model; OUTPUT gets samples x EB_MODEL_OUTPUT_BYTES
 *   host INPUT OUTPUT K TRACE    the same, and sample K's every node output to TRACE as
 *                                records (u32 node, u32 n, n bytes), little-endian
 *
 * Exit codes: 0 done, 1 bad use or I/O, 2 the model refused (eb_model_init/invoke).
 * Not part of the runtime: it is the only file that uses stdio.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eb_model.h"

static FILE *trace_file;

static void put_u32(FILE *f, uint32_t v)
{
    unsigned char b[4];
    b[0] = (unsigned char)(v & 0xFFu);
    b[1] = (unsigned char)((v >> 8) & 0xFFu);
    b[2] = (unsigned char)((v >> 16) & 0xFFu);
    b[3] = (unsigned char)((v >> 24) & 0xFFu);
    fwrite(b, 1, 4, f);
}

void eb_model_trace(int32_t node, const int8_t *data, int32_t n)
{
    if (trace_file != NULL) {
        put_u32(trace_file, (uint32_t)node);
        put_u32(trace_file, (uint32_t)n);
        fwrite(data, 1, (size_t)n, trace_file);
    }
}

int main(int argc, char **argv)
{
    FILE *in, *out;
    long trace_sample = -1, sample = 0;
    int8_t buf[EB_MODEL_INPUT_BYTES];
    int rc;

    if (argc != 3 && argc != 5) {
        fprintf(stderr, "usage: %s INPUT OUTPUT [SAMPLE TRACE]\n", argv[0]);
        return 1;
    }
    if (eb_model_init() != 0) {
        fprintf(stderr, "eb_model_init refused\n");
        return 2;
    }
    in = fopen(argv[1], "rb");
    out = fopen(argv[2], "wb");
    if (in == NULL || out == NULL) {
        fprintf(stderr, "cannot open %s or %s\n", argv[1], argv[2]);
        return 1;
    }
    if (argc == 5) {
        trace_sample = strtol(argv[3], NULL, 10);
    }
    while (fread(buf, 1, sizeof buf, in) == sizeof buf) {
        if (sample == trace_sample) {
            trace_file = fopen(argv[4], "wb");
            if (trace_file == NULL) {
                fprintf(stderr, "cannot open %s\n", argv[4]);
                return 1;
            }
        }
        memcpy(eb_model_input(), buf, sizeof buf);
        rc = eb_model_invoke();
        if (trace_file != NULL) {
            fclose(trace_file);
            trace_file = NULL;
        }
        if (rc != 0) {
            fprintf(stderr, "sample %ld: eb_model_invoke returned %d\n", sample, rc);
            return 2;
        }
        if (fwrite(eb_model_output(), 1, EB_MODEL_OUTPUT_BYTES, out) != EB_MODEL_OUTPUT_BYTES) {
            fprintf(stderr, "cannot write %s\n", argv[2]);
            return 1;
        }
        ++sample;
    }
    fclose(in);
    if (fclose(out) != 0) {
        fprintf(stderr, "cannot write %s\n", argv[2]);
        return 1;
    }
    return 0;
}
