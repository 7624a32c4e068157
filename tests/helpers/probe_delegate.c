/* A TFLite external delegate for tests (tests/device/test_accelerator.py): it records its options and every
 * Prepare call in the `log` file, claims no operator (the CPU runs the whole graph), and fails on demand —
 * `fail_if_exists=PATH`: creation fails while PATH exists (an unplugged accelerator: load_delegate fails);
 * `fail_prepare=1` or `fail_prepare_if_exists=PATH`: Prepare fails (the delegate cannot take the model).
 * The external-delegate ABI (tflite_plugin_create_delegate / tflite_plugin_destroy_delegate, TfLiteDelegate)
 * is declared here because neither the TFLite wheels nor Debian ship its headers; it is stable across 2.x. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
struct TfLiteContext;
typedef struct TfLiteDelegate {
  void *data_;
  TfLiteStatus (*Prepare)(struct TfLiteContext *context, struct TfLiteDelegate *delegate);
  void *CopyFromBufferHandle;
  void *CopyToBufferHandle;
  void *FreeBufferHandle;
  int64_t flags;
  void *opaque_delegate_builder;
} TfLiteDelegate;

typedef struct { char log[512]; char fail_file[512]; char fail_prepare_file[512]; int fail_prepare; } Probe;

static void record(const Probe *p, const char *line) {
  if (!p->log[0]) return;
  FILE *f = fopen(p->log, "a");
  if (f) { fprintf(f, "%s\n", line); fclose(f); }
}

static TfLiteStatus prepare(struct TfLiteContext *context, TfLiteDelegate *delegate) {
  (void)context;
  Probe *p = (Probe *)delegate->data_;
  if (p->fail_prepare || (p->fail_prepare_file[0] && access(p->fail_prepare_file, F_OK) == 0)) {
    record(p, "prepare failed");
    return kTfLiteError;
  }
  record(p, "prepare");
  return kTfLiteOk;
}

TfLiteDelegate *tflite_plugin_create_delegate(char **keys, char **values, size_t n, void (*report_error)(const char *)) {
  Probe *p = calloc(1, sizeof(Probe));
  char line[1024];
  for (size_t i = 0; i < n; i++) {
    if (!strcmp(keys[i], "log")) snprintf(p->log, sizeof p->log, "%s", values[i]);
    else if (!strcmp(keys[i], "fail_if_exists")) snprintf(p->fail_file, sizeof p->fail_file, "%s", values[i]);
    else if (!strcmp(keys[i], "fail_prepare")) p->fail_prepare = !strcmp(values[i], "1");
    else if (!strcmp(keys[i], "fail_prepare_if_exists"))
      snprintf(p->fail_prepare_file, sizeof p->fail_prepare_file, "%s", values[i]);
  }
  for (size_t i = 0; i < n; i++) {
    snprintf(line, sizeof line, "option %s=%s", keys[i], values[i]);
    record(p, line);
  }
  if (p->fail_file[0] && access(p->fail_file, F_OK) == 0) {
    record(p, "create failed: the accelerator is gone");
    if (report_error) report_error("probe delegate: the accelerator is gone");
    free(p);
    return NULL;
  }
  record(p, "create");
  TfLiteDelegate *d = calloc(1, sizeof(TfLiteDelegate));
  d->data_ = p;
  d->Prepare = prepare;
  d->flags = 1; /* kTfLiteDelegateFlagsAllowDynamicTensors: it claims nothing, so any graph will do */
  return d;
}

void tflite_plugin_destroy_delegate(TfLiteDelegate *d) {
  if (!d) return;
  record((Probe *)d->data_, "destroy");
  free(d->data_);
  free(d);
}
