/* libadrt: the public functions of adrt.h.
 *
 * This is the C part of a cffi embedding module (see build.py): cffi compiles it together with the
 * stubs of the adrt__py_* functions, whose bodies are Python (_impl.py). The C side does only what
 * needs no Python: the version, the per-thread last error, NULL checks, and starting the
 * interpreter as the Python that built the library (so it sees that environment's packages
 * whatever the host's PATH or working folder). Everything about bundles, sizes and handles is
 * decided in Python by the adrt runtime itself.
 *
 * build.py defines ADRT__VERSION and ADRT__PYTHON (the building interpreter's sys.executable)
 * before this file.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "adrt.h"
#include "_internal.h"

#define ADRT__RAN 0x100
#define ADRT__API __attribute__((visibility("default")))

/* Called from Python (declared in build.py's cdef) to set this thread's message. */
static void adrt__set_error(const char *message);

static _Thread_local char adrt__error[2048];

static void adrt__set_error(const char *message)
{
    snprintf(adrt__error, sizeof adrt__error, "%s", message ? message : "");
}

static int adrt__fail(int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(adrt__error, sizeof adrt__error, fmt, ap);
    va_end(ap);
    return status;
}

#define ADRT__REQUIRE(ptr, fn, what)                                                           \
    do {                                                                                       \
        if ((ptr) == NULL)                                                                     \
            return adrt__fail(ADRT_E_NULL, "%s: %s is NULL; expected %s", fn, #ptr, what);     \
    } while (0)

/* ---- starting the embedded interpreter -------------------------------------------------- */

static pthread_once_t adrt__once = PTHREAD_ONCE_INIT;
static int adrt__start_status = ADRT_OK;
static char adrt__start_error[1024];

static void adrt__start_python(void)
{
    PyConfig config;
    PyStatus st;

    if (Py_IsInitialized())
        return; /* the host already runs Python (e.g. it loaded us with ctypes): use that one */
    PyConfig_InitPythonConfig(&config);
    config.install_signal_handlers = 0; /* the host's signals stay the host's */
    config.parse_argv = 0;
    /* As if started as the building interpreter: same prefix, same venv (pyvenv.cfg), same .pth
     * files (editable installs), instead of whatever "python3" the host's PATH finds first. */
    st = PyConfig_SetBytesString(&config, &config.program_name, ADRT__PYTHON);
    if (!PyStatus_Exception(st))
        st = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(st)) {
        snprintf(adrt__start_error, sizeof adrt__start_error,
                 "the embedded Python (%s) could not start: %s%s%s", ADRT__PYTHON,
                 st.func ? st.func : "", st.func ? ": " : "",
                 st.err_msg ? st.err_msg : "unknown error");
        adrt__start_status = ADRT_E_PYTHON;
        return;
    }
    /* Release the GIL: every call takes it (through cffi) in whichever thread it runs. */
    PyEval_SaveThread();
}

static int adrt__ready(void)
{
    pthread_once(&adrt__once, adrt__start_python);
    if (adrt__start_status != ADRT_OK)
        return adrt__fail(adrt__start_status, "%s", adrt__start_error);
    return ADRT_OK;
}

/* The status of a call into Python; see _internal.h for ADRT__RAN. */
static int adrt__result(int rc)
{
    if (rc & ADRT__RAN)
        return rc & 0xff;
    return adrt__fail(ADRT_E_PYTHON,
                      "the embedded Python (%s) failed to set up libadrt's module; the traceback "
                      "was printed to stderr",
                      ADRT__PYTHON);
}

/* ---- the API ---------------------------------------------------------------------------- */

ADRT__API int adrt_version(const char **version)
{
    adrt__error[0] = '\0';
    ADRT__REQUIRE(version, "adrt_version", "a const char ** to receive the version string");
    *version = ADRT__VERSION;
    return ADRT_OK;
}

ADRT__API int adrt_last_error(const char **message)
{
    if (message == NULL)
        return ADRT_E_NULL; /* keeps the message it would have returned */
    *message = adrt__error;
    return ADRT_OK;
}

ADRT__API int adrt_open(const char *bundle_path, const char *backend, int threads,
                        adrt_handle *handle)
{
    int rc;
    adrt__error[0] = '\0';
    ADRT__REQUIRE(handle, "adrt_open", "an adrt_handle * to receive the handle");
    *handle = 0;
    ADRT__REQUIRE(bundle_path, "adrt_open", "the path of a bundle folder or .zip");
    if ((rc = adrt__ready()) != ADRT_OK)
        return rc;
    return adrt__result(adrt__py_open(bundle_path, backend, threads, handle));
}

ADRT__API int adrt_input_size(adrt_handle handle, int *height, int *width, int *channels)
{
    int rc;
    adrt__error[0] = '\0';
    ADRT__REQUIRE(height, "adrt_input_size", "an int * to receive the height");
    ADRT__REQUIRE(width, "adrt_input_size", "an int * to receive the width");
    ADRT__REQUIRE(channels, "adrt_input_size", "an int * to receive the channel count");
    if ((rc = adrt__ready()) != ADRT_OK)
        return rc;
    return adrt__result(adrt__py_input_size(handle, height, width, channels));
}

ADRT__API int adrt_precision(adrt_handle handle, char *buffer, size_t size)
{
    int rc;
    adrt__error[0] = '\0';
    ADRT__REQUIRE(buffer, "adrt_precision", "a char buffer to receive the precision");
    if ((rc = adrt__ready()) != ADRT_OK)
        return rc;
    return adrt__result(adrt__py_precision(handle, buffer, size));
}

ADRT__API int adrt_threshold(adrt_handle handle, float *threshold)
{
    int rc;
    adrt__error[0] = '\0';
    ADRT__REQUIRE(threshold, "adrt_threshold", "a float * to receive the threshold");
    if ((rc = adrt__ready()) != ADRT_OK)
        return rc;
    return adrt__result(adrt__py_threshold(handle, threshold));
}

ADRT__API int adrt_run(adrt_handle handle, const uint8_t *images, size_t images_len, int n,
                       int height, int width, int channels, float *maps, size_t maps_len,
                       float *scores, size_t scores_len)
{
    int rc;
    adrt__error[0] = '\0';
    ADRT__REQUIRE(images, "adrt_run", "n*height*width*channels uint8 bytes (NHWC, RGB)");
    ADRT__REQUIRE(scores, "adrt_run", "a buffer of at least n floats");
    if (maps == NULL && maps_len != 0)
        return adrt__fail(ADRT_E_NULL,
                          "adrt_run: maps is NULL with maps_len = %zu; expected a buffer of at "
                          "least n*H*W floats, or maps_len = 0 for scores only",
                          maps_len);
    if ((rc = adrt__ready()) != ADRT_OK)
        return rc;
    return adrt__result(adrt__py_run(handle, images, images_len, n, height, width, channels, maps,
                                     maps_len, scores, scores_len));
}

ADRT__API int adrt_input_count(adrt_handle handle, int *count)
{
    int rc;
    adrt__error[0] = '\0';
    ADRT__REQUIRE(count, "adrt_input_count", "an int * to receive the number of image buffers");
    if ((rc = adrt__ready()) != ADRT_OK)
        return rc;
    return adrt__result(adrt__py_input_count(handle, count));
}

ADRT__API int adrt_run_pair(adrt_handle handle, const uint8_t *images, size_t images_len,
                            const uint8_t *references, size_t references_len, int n, int height,
                            int width, int channels, float *maps, size_t maps_len, float *scores,
                            size_t scores_len)
{
    int rc;
    adrt__error[0] = '\0';
    ADRT__REQUIRE(images, "adrt_run_pair", "n*height*width*channels uint8 bytes (NHWC, RGB)");
    ADRT__REQUIRE(references, "adrt_run_pair",
                  "n*height*width*channels uint8 bytes, one reference per image");
    ADRT__REQUIRE(scores, "adrt_run_pair", "a buffer of at least n floats");
    if (maps == NULL && maps_len != 0)
        return adrt__fail(ADRT_E_NULL,
                          "adrt_run_pair: maps is NULL with maps_len = %zu; expected a buffer of at "
                          "least n*H*W floats, or maps_len = 0 for scores only",
                          maps_len);
    if ((rc = adrt__ready()) != ADRT_OK)
        return rc;
    return adrt__result(adrt__py_run_pair(handle, images, images_len, references, references_len, n,
                                          height, width, channels, maps, maps_len, scores,
                                          scores_len));
}

ADRT__API int adrt_prepare(adrt_handle handle, const uint8_t *image, size_t image_len, int height,
                           int width, int channels, uint8_t *out, size_t out_len)
{
    int rc;
    adrt__error[0] = '\0';
    ADRT__REQUIRE(image, "adrt_prepare", "height*width*channels uint8 bytes (HWC; 1, 3 or 4 channels)");
    ADRT__REQUIRE(out, "adrt_prepare", "a buffer of H*W*3 uint8 bytes (adrt_input_size)");
    if ((rc = adrt__ready()) != ADRT_OK)
        return rc;
    return adrt__result(adrt__py_prepare(handle, image, image_len, height, width, channels, out, out_len));
}

ADRT__API int adrt_pixel_threshold(adrt_handle handle, float *pixel_threshold)
{
    int rc;
    adrt__error[0] = '\0';
    ADRT__REQUIRE(pixel_threshold, "adrt_pixel_threshold", "a float * to receive the pixel threshold");
    if ((rc = adrt__ready()) != ADRT_OK)
        return rc;
    return adrt__result(adrt__py_pixel_threshold(handle, pixel_threshold));
}

ADRT__API int adrt_set_thresholds(adrt_handle handle, float threshold, float pixel_threshold)
{
    int rc;
    adrt__error[0] = '\0';
    if ((rc = adrt__ready()) != ADRT_OK)
        return rc;
    return adrt__result(adrt__py_set_thresholds(handle, threshold, pixel_threshold));
}

#define ADRT__OPTIONAL(ptr, len, what)                                                              \
    do {                                                                                            \
        if ((ptr) == NULL && (len) != 0)                                                            \
            return adrt__fail(ADRT_E_NULL,                                                          \
                              "adrt_run_outputs: outputs->%s is NULL with outputs->%s_len = %zu; "  \
                              "expected a buffer of at least %s, or length 0 to skip it",           \
                              #ptr, #ptr, (size_t)(len), what);                                     \
    } while (0)

ADRT__API int adrt_run_outputs(adrt_handle handle, const uint8_t *images, size_t images_len, int n,
                               int height, int width, int channels, const adrt_outputs *outputs)
{
    int rc;
    adrt__error[0] = '\0';
    ADRT__REQUIRE(images, "adrt_run_outputs", "n*height*width*channels uint8 bytes (NHWC, RGB)");
    ADRT__REQUIRE(outputs, "adrt_run_outputs", "an adrt_outputs naming the buffers to fill");
    {
        const float *maps = outputs->maps, *scores = outputs->scores, *raw_maps = outputs->raw_maps,
                    *raw_scores = outputs->raw_scores;
        const uint8_t *labels = outputs->labels, *masks = outputs->masks;
        ADRT__OPTIONAL(maps, outputs->maps_len, "n*H*W floats");
        ADRT__OPTIONAL(scores, outputs->scores_len, "n floats");
        ADRT__OPTIONAL(raw_maps, outputs->raw_maps_len, "n*H*W floats");
        ADRT__OPTIONAL(raw_scores, outputs->raw_scores_len, "n floats");
        ADRT__OPTIONAL(labels, outputs->labels_len, "n bytes");
        ADRT__OPTIONAL(masks, outputs->masks_len, "n*H*W bytes");
    }
    if ((rc = adrt__ready()) != ADRT_OK)
        return rc;
    return adrt__result(adrt__py_run_outputs(
        handle, images, images_len, n, height, width, channels, outputs->maps, outputs->maps_len,
        outputs->scores, outputs->scores_len, outputs->raw_maps, outputs->raw_maps_len,
        outputs->raw_scores, outputs->raw_scores_len, outputs->labels, outputs->labels_len,
        outputs->masks, outputs->masks_len));
}

ADRT__API int adrt_close(adrt_handle handle)
{
    int rc;
    adrt__error[0] = '\0';
    if ((rc = adrt__ready()) != ADRT_OK)
        return rc;
    return adrt__result(adrt__py_close(handle));
}
