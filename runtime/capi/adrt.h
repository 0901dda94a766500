/* adrt.h: the C API of the adrt runtime (libadrt).
 *
 * Run an adrt bundle (fused ONNX anomaly detector + manifest) from C or C++. The library embeds
 * the Python runtime (adrt.runtime: numpy + ONNX Runtime, never torch) through cffi; it is built
 * from an installed adrt with `adrt build-capi --out DIR`, which also prints the command to
 * compile against it:
 *
 *     cc app.c -I DIR -L DIR -ladrt -Wl,-rpath,DIR -o app
 *
 * Conventions
 *   - Every function returns an adrt_status: ADRT_OK (0) or a positive error code. On an error
 *     adrt_last_error() gives a one-line message naming the offending value and what was expected.
 *     Nothing aborts the host process on bad input.
 *   - Buffers belong to the caller. Lengths are counts of elements (bytes for uint8, floats for
 *     float), never guessed from the pointers.
 *   - Images are uint8, N×H×W×C (NHWC, RGB), contiguous, at exactly the bundle's input size
 *     (adrt_input_size; a tiled bundle's input is the full frame): adrt_prepare brings an image of
 *     any size there by the bundle's geometry (resize or letterbox), or the caller does.
 *   - Handles are numbers, never reused: 0 is never valid, and a closed handle stays invalid
 *     (ADRT_E_HANDLE), so a stale handle cannot reach freed memory.
 *
 * Threads
 *   Every function may be called from any thread. Several handles may be open and used at once.
 *   One handle may be used from several threads at once: concurrent adrt_run calls on one handle
 *   are allowed (ONNX Runtime's Run is thread-safe; each call has its own outputs). adrt_close
 *   marks the handle closed at once (calls that start afterwards fail with ADRT_E_HANDLE), waits
 *   for the runs already in flight on it to finish, then frees it. The last error is per thread.
 *   The embedded Python interpreter is started once, by the first call that needs it.
 */
#ifndef ADRT_H
#define ADRT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped when a declaration in this header changes incompatibly. */
#define ADRT_ABI_VERSION 1

/* An open bundle on one backend. 0 is never a valid handle. */
typedef int64_t adrt_handle;

typedef enum adrt_status {
    ADRT_OK = 0,
    ADRT_E_NULL = 1,     /* a required pointer argument is NULL */
    ADRT_E_ARGUMENT = 2, /* a value out of range: threads outside 0..4*CPUs, unknown backend, n < 1, ... */
    ADRT_E_HANDLE = 3,   /* the handle is not open: never opened, or already closed */
    ADRT_E_BUNDLE = 4,   /* the bundle is missing or not a bundle; its manifest is invalid (a missing or
                            wrongly typed field, a value the runtime does not implement); a file it
                            needs is unlisted, outside the bundle or fails its checksum; a zip is
                            corrupt or over the extraction limits; the model's inputs/outputs differ
                            from the manifest's */
    ADRT_E_BACKEND = 5,  /* the backend is not available or cannot load the model */
    ADRT_E_INPUT = 6,    /* the images do not match the bundle's input spec (size, channels) */
    ADRT_E_BUFFER = 7,   /* a buffer length does not match what the call needs */
    ADRT_E_PYTHON = 8,   /* the embedded Python runtime could not start or import adrt */
    ADRT_E_INTERNAL = 9, /* an unexpected error; the message has the details */
    ADRT_E_OUTPUT = 10   /* the model produced NaN/Inf (e.g. a diverging projection); nothing written */
} adrt_status;

/* The adrt version the library was built from, e.g. "0.1.0" (static storage). */
int adrt_version(const char **version);

/* The message of this thread's most recent adrt call if it failed, "" if it succeeded. The
 * string is valid until the next adrt call in this thread. */
int adrt_last_error(const char **message);

/* Open and verify the bundle at `bundle_path` (a folder or a .zip). `backend` is "ort-cpu",
 * "ort-cuda" or "ort-trt" (NULL means "ort-cpu"); a backend that is not really active is an error,
 * never a silent fallback. `threads` is ONNX Runtime's intra-op thread count: 0 for its default,
 * else 1 to 4 per CPU (ADRT_E_ARGUMENT outside that).
 * On success *handle is the new handle; on failure it is set to 0. */
int adrt_open(const char *bundle_path, const char *backend, int threads, adrt_handle *handle);

/* The input size every image must have: height, width and channels (3, RGB). */
int adrt_input_size(adrt_handle handle, int *height, int *width, int *channels);

/* The precision of the bundle's model as its manifest states it (e.g. "fp32"), copied into
 * `buffer` with its terminating NUL; ADRT_E_BUFFER when `size` is too small. */
int adrt_precision(adrt_handle handle, char *buffer, size_t size);

/* The handle's decision threshold on the calibrated score scale: a score >= threshold means
 * anomalous. 0.5 (the bundle's calibrated threshold) until adrt_set_thresholds changes it. */
int adrt_threshold(adrt_handle handle, float *threshold);

/* The handle's pixel threshold on the calibrated map scale (0.5 until changed): a map value >= it
 * marks an anomalous pixel (adrt_outputs.masks). */
int adrt_pixel_threshold(adrt_handle handle, float *pixel_threshold);

/* Set the handle's image and pixel thresholds, both on the calibrated scale and strictly between 0
 * and 1 (0.5 = the bundle's calibrated threshold; higher flags fewer images/pixels). No re-export:
 * the model's outputs do not change, only the labels and masks adrt_run_outputs derives from
 * them. NaN, +-inf or a value outside (0, 1) is ADRT_E_ARGUMENT and changes nothing. Applies to the
 * runs that start after it returns (on every thread using the handle). */
int adrt_set_thresholds(adrt_handle handle, float threshold, float pixel_threshold);

/* Where adrt_run_outputs writes. Every buffer is optional: NULL with length 0 skips that output;
 * a buffer needs at least the length given (n*H*W for maps and masks, n for the others). */
typedef struct adrt_outputs {
    float *maps;          /* calibrated anomaly maps, n*H*W floats (0.5 at the bundle's threshold) */
    size_t maps_len;
    float *scores;        /* calibrated scores, n floats */
    size_t scores_len;
    float *raw_maps;      /* the method's raw maps (uncalibrated), n*H*W floats */
    size_t raw_maps_len;
    float *raw_scores;    /* the method's raw scores, n floats */
    size_t raw_scores_len;
    uint8_t *labels;      /* 1 = anomalous (score >= the handle's threshold), else 0; n bytes */
    size_t labels_len;
    uint8_t *masks;       /* 1 = anomalous pixel (map >= the handle's pixel threshold); n*H*W bytes */
    size_t masks_len;
} adrt_outputs;

/* Run `n` images, uint8 n×height×width×channels in `images` (`images_len` must be exactly
 * n*height*width*channels), which must be the bundle's input size. Writes the calibrated anomaly
 * maps, n×H×W floats, to `maps` (`maps_len` >= n*H*W; `maps` may be NULL with `maps_len` 0 when
 * only scores are wanted) and the n calibrated scores to `scores` (`scores_len` >= n).
 * The images are read in place; the outputs are written straight into the caller's buffers. */
int adrt_run(adrt_handle handle, const uint8_t *images, size_t images_len, int n, int height,
             int width, int channels, float *maps, size_t maps_len, float *scores,
             size_t scores_len);

/* How many image buffers each run takes: 1, or 2 for a bundle that compares every image with a
 * reference image given at run time (change detection: `adrt info` shows its inputs). A bundle with
 * a golden reference stored inside it takes 1. */
int adrt_input_count(adrt_handle handle, int *count);

/* adrt_run for a bundle whose adrt_input_count is 2: `references` holds one reference image per
 * image, uint8 n×height×width×channels like `images` (`references_len` must equal `images_len`).
 * Both buffers are read in place. adrt_run on such a bundle fails with ADRT_E_INPUT, as does
 * adrt_run_pair on a bundle that takes one input. */
int adrt_run_pair(adrt_handle handle, const uint8_t *images, size_t images_len,
                  const uint8_t *references, size_t references_len, int n, int height, int width,
                  int channels, float *maps, size_t maps_len, float *scores, size_t scores_len);

/* Bring one uint8 image of any size (height×width×channels, HWC: 1 = gray, 3 = RGB, 4 = RGBA with
 * the alpha dropped) to the bundle's input by the bundle's input geometry, exactly as the Python
 * runtime does (Session.prepare): resized (bilinear), letterboxed (aspect ratio kept, centred,
 * padded with the recorded value) or, for a tiled bundle, resized to its full-frame size. Writes
 * H×W×3 bytes (adrt_input_size) to `out` (`out_len` >= H*W*3), ready for adrt_run. */
int adrt_prepare(adrt_handle handle, const uint8_t *image, size_t image_len, int height, int width,
                 int channels, uint8_t *out, size_t out_len);

/* Run `n` images as adrt_run does, writing every output `outputs` asks for (raw values, labels
 * and masks at the handle's thresholds, besides the calibrated maps and scores). */
int adrt_run_outputs(adrt_handle handle, const uint8_t *images, size_t images_len, int n, int height,
                     int width, int channels, const adrt_outputs *outputs);

/* Close the handle: waits for runs in flight on it, then frees its model. */
int adrt_close(adrt_handle handle);

#ifdef __cplusplus
}
#endif

#endif /* ADRT_H */
