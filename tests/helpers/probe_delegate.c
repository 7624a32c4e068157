/* A TFLite external delegate for tests (tests/device/test_accelerator.py): it records its options and every
 * Prepare call in the `log` file, claims no operator (the CPU runs the whole graph), and fails on demand —
 * `fail_if_exists=PATH`: creation fails while PATH exists (an unplugged accelerator: load_delegate fails);
 * `fail_prepare=1` or `fail_prepare_if_exists=PATH`: Prepare fails (the delegate cannot take the model);
 * `claim=reshape`: it takes the graph's RESHAPE nodes (a copy of the bytes: the CPU's answer, exactly) and
 * `fail_invoke_if_exists=PATH` makes its kernel fail while PATH exists (an accelerator unplugged mid-run);
 * `hang_invoke_if_exists=PATH` makes it block while PATH exists (a locked-up accelerator), then answer;
 * `abort_after_invokes=N`: the Nth invoke of its kernels in a process aborts the process from a thread of the
 * delegate's own while the invoking thread waits (libedgetpu's "USB transfer error … Abort" on a Coral mid-run);
 * `crash_if_exists=PATH`: creation crashes the process (SIGSEGV) while PATH exists (a driver built for another
 * runtime); `hang_create_if_exists=PATH`: creation blocks while PATH exists (a device locked up at load).
 * The external-delegate ABI (tflite_plugin_create_delegate / tflite_plugin_destroy_delegate, TfLiteDelegate)
 * is declared here because neither the TFLite wheels nor Debian ship its headers; it is stable across 2.x. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
typedef struct { int size; int data[]; } TfLiteIntArray;
typedef struct TfLiteDelegate TfLiteDelegate;
typedef struct TfLiteNode {
  TfLiteIntArray *inputs, *outputs, *intermediates, *temporaries;
  void *user_data, *builtin_data;
  const void *custom_initial_data;
  int custom_initial_data_size;
  TfLiteDelegate *delegate;
} TfLiteNode;
typedef struct {
  int type;
  union { void *raw; } data;
  TfLiteIntArray *dims;
  struct { float scale; int32_t zero_point; } params;
  int allocation_type;
  size_t bytes;
  const void *allocation;
  const char *name;
  TfLiteDelegate *delegate;
  int buffer_handle;
  bool data_is_stale, is_variable;
  struct { int type; void *params; } quantization;
  void *sparsity;
  const TfLiteIntArray *dims_signature;
} TfLiteTensor; /* whole (`context->tensors` is an array of them): unchanged since TFLite 2.4 */
struct TfLiteContext;
typedef struct TfLiteRegistration {
  void *(*init)(struct TfLiteContext *context, const char *buffer, size_t length);
  void (*free)(struct TfLiteContext *context, void *buffer);
  TfLiteStatus (*prepare)(struct TfLiteContext *context, TfLiteNode *node);
  TfLiteStatus (*invoke)(struct TfLiteContext *context, TfLiteNode *node);
  const char *(*profiling_string)(const struct TfLiteContext *context, const TfLiteNode *node);
  int32_t builtin_code;
  const char *custom_name;
  int version;
  void *later[16]; /* registration_external, async_kernel, inplace_operator, …: all zero = none */
} TfLiteRegistration;
typedef struct TfLiteContext {
  size_t tensors_size;
  TfLiteStatus (*GetExecutionPlan)(struct TfLiteContext *context, TfLiteIntArray **execution_plan);
  TfLiteTensor *tensors;
  void *impl_;
  void *ResizeTensor;
  void (*ReportError)(struct TfLiteContext *context, const char *format, ...);
  void *AddTensors;
  TfLiteStatus (*GetNodeAndRegistration)(struct TfLiteContext *, int node_index, TfLiteNode **node,
                                         TfLiteRegistration **registration);
  TfLiteStatus (*ReplaceNodeSubsetsWithDelegateKernels)(struct TfLiteContext *, TfLiteRegistration registration,
                                                        const TfLiteIntArray *nodes_to_replace,
                                                        TfLiteDelegate *delegate);
} TfLiteContext; /* the leading fields only */
typedef struct { TfLiteDelegate *delegate; TfLiteIntArray *nodes_to_replace, *input_tensors, *output_tensors; }
    TfLiteDelegateParams;
enum { kTfLiteBuiltinReshape = 22 };

struct TfLiteDelegate {
  void *data_;
  TfLiteStatus (*Prepare)(struct TfLiteContext *context, struct TfLiteDelegate *delegate);
  void *CopyFromBufferHandle;
  void *CopyToBufferHandle;
  void *FreeBufferHandle;
  int64_t flags;
  void *opaque_delegate_builder;
};

typedef struct {
  char log[512]; char fail_file[512]; char fail_prepare_file[512]; char fail_invoke_file[512];
  char hang_invoke_file[512]; char crash_file[512]; char hang_create_file[512];
  int fail_prepare, claim_reshape, abort_after;
} Probe;
typedef struct { const Probe *probe; int from, to; } Kernel; /* one claimed RESHAPE: its data tensor in and out */

static void record(const Probe *p, const char *line) {
  if (!p->log[0]) return;
  FILE *f = fopen(p->log, "a");
  if (f) { fprintf(f, "%s\n", line); fclose(f); }
}

/* Block while `file` exists (a locked-up accelerator), then go on. */
static void hang_while(const Probe *p, const char *file) {
  if (!file[0] || access(file, F_OK) != 0) return;
  record(p, "hang");
  while (access(file, F_OK) == 0) usleep(10000);
  record(p, "hang over");
}

static void *kernel_init(TfLiteContext *context, const char *buffer, size_t length) {
  (void)length;
  const TfLiteDelegateParams *params = (const TfLiteDelegateParams *)buffer;
  TfLiteNode *node;
  TfLiteRegistration *registration;
  if (context->GetNodeAndRegistration(context, params->nodes_to_replace->data[0], &node, &registration) != kTfLiteOk)
    return NULL;
  Kernel *k = calloc(1, sizeof(Kernel));
  k->probe = (const Probe *)params->delegate->data_;
  k->from = node->inputs->data[0];
  k->to = node->outputs->data[0];
  return k;
}

static void kernel_free(TfLiteContext *context, void *buffer) { (void)context; free(buffer); }

static int invokes; /* this process's kernel invokes, for `abort_after_invokes` */

static void *abort_process(void *arg) { (void)arg; abort(); return NULL; }

static TfLiteStatus kernel_invoke(TfLiteContext *context, TfLiteNode *node) {
  const Kernel *k = (const Kernel *)node->user_data;
  if (!k) return kTfLiteError;
  if (k->probe->abort_after > 0 && ++invokes >= k->probe->abort_after) {
    record(k->probe, "abort");
    pthread_t driver;
    pthread_create(&driver, NULL, abort_process, NULL);
    for (;;) pause(); /* the transfer this call waits for never completes */
  }
  if (k->probe->fail_invoke_file[0] && access(k->probe->fail_invoke_file, F_OK) == 0) {
    context->ReportError(context, "probe delegate: the accelerator stopped answering");
    return kTfLiteError;
  }
  hang_while(k->probe, k->probe->hang_invoke_file);
  const TfLiteTensor *in = &context->tensors[k->from];
  TfLiteTensor *out = &context->tensors[k->to];
  memcpy(out->data.raw, in->data.raw, in->bytes < out->bytes ? in->bytes : out->bytes);
  return kTfLiteOk;
}

/* Hand every RESHAPE node to a kernel of this delegate, one node per kernel. */
static TfLiteStatus claim_reshapes(TfLiteContext *context, TfLiteDelegate *delegate) {
  TfLiteIntArray *plan;
  if (context->GetExecutionPlan(context, &plan) != kTfLiteOk) return kTfLiteError;
  int found[64], n = 0;
  for (int i = 0; i < plan->size && n < 64; i++) {
    TfLiteNode *node;
    TfLiteRegistration *registration;
    if (context->GetNodeAndRegistration(context, plan->data[i], &node, &registration) != kTfLiteOk) return kTfLiteError;
    if (registration->builtin_code == kTfLiteBuiltinReshape) found[n++] = plan->data[i];
  }
  char line[64];
  snprintf(line, sizeof line, "claimed %d", n);
  record((Probe *)delegate->data_, line);
  TfLiteRegistration kernel;
  memset(&kernel, 0, sizeof kernel);
  kernel.init = kernel_init;
  kernel.free = kernel_free;
  kernel.invoke = kernel_invoke;
  kernel.custom_name = "probe";
  kernel.version = 1;
  for (int i = 0; i < n; i++) {
    struct { int size; int data[1]; } one = {1, {found[i]}};
    TfLiteStatus status =
        context->ReplaceNodeSubsetsWithDelegateKernels(context, kernel, (const TfLiteIntArray *)&one, delegate);
    if (status != kTfLiteOk) return status;
  }
  return kTfLiteOk;
}

static TfLiteStatus prepare(struct TfLiteContext *context, TfLiteDelegate *delegate) {
  Probe *p = (Probe *)delegate->data_;
  if (p->fail_prepare || (p->fail_prepare_file[0] && access(p->fail_prepare_file, F_OK) == 0)) {
    record(p, "prepare failed");
    return kTfLiteError;
  }
  record(p, "prepare");
  return p->claim_reshape ? claim_reshapes(context, delegate) : kTfLiteOk;
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
    else if (!strcmp(keys[i], "fail_invoke_if_exists"))
      snprintf(p->fail_invoke_file, sizeof p->fail_invoke_file, "%s", values[i]);
    else if (!strcmp(keys[i], "hang_invoke_if_exists"))
      snprintf(p->hang_invoke_file, sizeof p->hang_invoke_file, "%s", values[i]);
    else if (!strcmp(keys[i], "crash_if_exists")) snprintf(p->crash_file, sizeof p->crash_file, "%s", values[i]);
    else if (!strcmp(keys[i], "hang_create_if_exists"))
      snprintf(p->hang_create_file, sizeof p->hang_create_file, "%s", values[i]);
    else if (!strcmp(keys[i], "claim")) p->claim_reshape = !strcmp(values[i], "reshape");
    else if (!strcmp(keys[i], "abort_after_invokes")) p->abort_after = atoi(values[i]);
  }
  for (size_t i = 0; i < n; i++) {
    snprintf(line, sizeof line, "option %s=%s", keys[i], values[i]);
    record(p, line);
  }
  if (p->crash_file[0] && access(p->crash_file, F_OK) == 0) {
    record(p, "crash");
    raise(SIGSEGV);
  }
  hang_while(p, p->hang_create_file);
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
  d->flags = 1; /* kTfLiteDelegateFlagsAllowDynamicTensors: its kernels copy bytes, any shape will do */
  return d;
}

void tflite_plugin_destroy_delegate(TfLiteDelegate *d) {
  if (!d) return;
  record((Probe *)d->data_, "destroy");
  free(d->data_);
  free(d);
}
