/* libadrt's internal entry points, implemented in Python (adrt.runtime.capi._impl) through cffi's
 * embedding API and called only by the public functions in libadrt.c. cffi parses this file, so
 * it holds declarations only (no preprocessor lines). Each returns ADRT__RAN | status: a call
 * that reaches Python always sets ADRT__RAN, so a zero (what cffi returns when the interpreter
 * failed to start) is told apart from ADRT_OK. */
int adrt__py_open(const char *bundle_path, const char *backend, int threads, int64_t *handle);
int adrt__py_input_size(int64_t handle, int *height, int *width, int *channels);
int adrt__py_precision(int64_t handle, char *buffer, size_t size);
int adrt__py_threshold(int64_t handle, float *threshold);
int adrt__py_run(int64_t handle, const uint8_t *images, size_t images_len, int n, int height,
                 int width, int channels, float *maps, size_t maps_len, float *scores,
                 size_t scores_len);
int adrt__py_input_count(int64_t handle, int *count);
int adrt__py_run_pair(int64_t handle, const uint8_t *images, size_t images_len, const uint8_t *references,
                      size_t references_len, int n, int height, int width, int channels, float *maps,
                      size_t maps_len, float *scores, size_t scores_len);
int adrt__py_prepare(int64_t handle, const uint8_t *image, size_t image_len, int height, int width,
                     int channels, uint8_t *out, size_t out_len);
int adrt__py_pixel_threshold(int64_t handle, float *pixel_threshold);
int adrt__py_set_thresholds(int64_t handle, float threshold, float pixel_threshold);
int adrt__py_run_outputs(int64_t handle, const uint8_t *images, size_t images_len, int n, int height,
                         int width, int channels, float *maps, size_t maps_len, float *scores,
                         size_t scores_len, float *raw_maps, size_t raw_maps_len, float *raw_scores,
                         size_t raw_scores_len, uint8_t *labels, size_t labels_len, uint8_t *masks,
                         size_t masks_len);
int adrt__py_close(int64_t handle);
