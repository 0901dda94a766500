/* adrt_example: score PPM/PGM images with an adrt bundle through the C API (adrt.h).
 *
 *     adrt_example [--backend NAME] [--threads N] [--batch K] [--maps FILE] BUNDLE IMAGE...
 *
 * Images are binary PPM (P6, RGB) or PGM (P5, gray: replicated to RGB), 8-bit (maxval <= 255),
 * at exactly the bundle's input size: resizing is left to the caller, so that what is scored is
 * what is on disk (`adrt info BUNDLE` shows the size; ImageMagick's `convert in.png -resize
 * 256x256! out.ppm` makes such files). Prints one line per image, "path<TAB>score<TAB>label",
 * after a "#" line describing the bundle. --maps writes the anomaly maps of all images as raw
 * float32 (native byte order), image after image, each H×W row-major.
 *
 * Exit status: 0 on success, 1 when the library reports an error (its message is printed),
 * 2 for bad arguments or unreadable image files.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adrt.h"

static int report(const char *what, int status)
{
    const char *message = "";
    adrt_last_error(&message);
    fprintf(stderr, "adrt_example: %s failed (status %d): %s\n", what, status, message);
    return 1;
}

/* Skip whitespace and '#' comments in a PNM header. */
static void skip_space(FILE *f)
{
    int c;
    while ((c = fgetc(f)) != EOF) {
        if (c == '#') {
            while ((c = fgetc(f)) != EOF && c != '\n')
                ;
        } else if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
            ungetc(c, f);
            return;
        }
    }
}

static int read_number(FILE *f, int *value)
{
    skip_space(f);
    return fscanf(f, "%d", value) == 1 && *value > 0;
}

/* Read a P6/P5 file of exactly height×width into rgb (height*width*3 bytes). */
static int read_pnm(const char *path, int height, int width, unsigned char *rgb)
{
    FILE *f = fopen(path, "rb");
    char magic[3] = {0};
    int w, h, maxval, channels;
    size_t pixels, got;

    if (f == NULL) {
        fprintf(stderr, "adrt_example: %s: %s\n", path, strerror(errno));
        return 0;
    }
    if (fread(magic, 1, 2, f) != 2 || magic[0] != 'P' || (magic[1] != '6' && magic[1] != '5')) {
        fprintf(stderr, "adrt_example: %s: not a binary PPM/PGM file (magic %.2s; expected P6 or P5)\n",
                path, magic);
        fclose(f);
        return 0;
    }
    channels = magic[1] == '6' ? 3 : 1;
    if (!read_number(f, &w) || !read_number(f, &h) || !read_number(f, &maxval)) {
        fprintf(stderr, "adrt_example: %s: bad PNM header (expected width, height, maxval)\n", path);
        fclose(f);
        return 0;
    }
    if (maxval > 255) {
        fprintf(stderr, "adrt_example: %s: maxval %d; expected an 8-bit image (maxval <= 255)\n", path,
                maxval);
        fclose(f);
        return 0;
    }
    if (w != width || h != height) {
        fprintf(stderr, "adrt_example: %s: image is %dx%d (width x height); the bundle expects %dx%d, "
                        "resize it first\n", path, w, h, width, height);
        fclose(f);
        return 0;
    }
    fgetc(f); /* the single whitespace byte after maxval */
    pixels = (size_t)w * (size_t)h;
    got = fread(rgb, (size_t)channels, pixels, f);
    fclose(f);
    if (got != pixels) {
        fprintf(stderr, "adrt_example: %s: truncated (%zu of %zu pixels)\n", path, got, pixels);
        return 0;
    }
    if (channels == 1) /* gray to RGB, in place from the end */
        for (size_t i = pixels; i-- > 0;)
            rgb[3 * i] = rgb[3 * i + 1] = rgb[3 * i + 2] = rgb[i];
    return 1;
}

static int usage(void)
{
    fprintf(stderr, "usage: adrt_example [--backend NAME] [--threads N] [--batch K] [--maps FILE] "
                    "BUNDLE IMAGE.ppm...\n");
    return 2;
}

int main(int argc, char **argv)
{
    const char *backend = "ort-cpu", *maps_path = NULL, *version = "", *bundle;
    int threads = 0, batch = 8, first, status, height, width, channels, code = 0;
    char precision[32];
    float threshold;
    adrt_handle det = 0;
    unsigned char *images = NULL;
    float *maps = NULL, *scores = NULL;
    FILE *maps_file = NULL;

    for (first = 1; first < argc && strncmp(argv[first], "--", 2) == 0; first += 2) {
        if (first + 1 >= argc)
            return usage();
        if (strcmp(argv[first], "--backend") == 0)
            backend = argv[first + 1];
        else if (strcmp(argv[first], "--threads") == 0)
            threads = atoi(argv[first + 1]);
        else if (strcmp(argv[first], "--batch") == 0)
            batch = atoi(argv[first + 1]);
        else if (strcmp(argv[first], "--maps") == 0)
            maps_path = argv[first + 1];
        else
            return usage();
    }
    if (argc - first < 2 || batch < 1)
        return usage();
    bundle = argv[first++];

    adrt_version(&version);
    if ((status = adrt_open(bundle, backend, threads, &det)) != ADRT_OK)
        return report("adrt_open", status);
    if ((status = adrt_input_size(det, &height, &width, &channels)) != ADRT_OK ||
        (status = adrt_precision(det, precision, sizeof precision)) != ADRT_OK ||
        (status = adrt_threshold(det, &threshold)) != ADRT_OK) {
        code = report("querying the bundle", status);
        goto done;
    }
    printf("# adrt %s, bundle %s: input %dx%dx%d, %s, threshold %g, backend %s\n", version, bundle,
           height, width, channels, precision, threshold, backend);

    size_t image_len = (size_t)height * width * channels, map_len = (size_t)height * width;
    images = malloc(image_len * batch);
    maps = malloc(map_len * batch * sizeof(float));
    scores = malloc(batch * sizeof(float));
    if (images == NULL || maps == NULL || scores == NULL) {
        fprintf(stderr, "adrt_example: out of memory for a batch of %d\n", batch);
        code = 2;
        goto done;
    }
    if (maps_path && (maps_file = fopen(maps_path, "wb")) == NULL) {
        fprintf(stderr, "adrt_example: %s: %s\n", maps_path, strerror(errno));
        code = 2;
        goto done;
    }
    for (int start = first; start < argc; start += batch) {
        int n = argc - start < batch ? argc - start : batch;
        for (int i = 0; i < n; i++)
            if (channels != 3 || !read_pnm(argv[start + i], height, width, images + i * image_len)) {
                if (channels != 3)
                    fprintf(stderr, "adrt_example: bundle has %d channels; this example reads RGB\n",
                            channels);
                code = 2;
                goto done;
            }
        status = adrt_run(det, images, image_len * n, n, height, width, channels, maps, map_len * n,
                          scores, (size_t)n);
        if (status != ADRT_OK) {
            code = report("adrt_run", status);
            goto done;
        }
        for (int i = 0; i < n; i++)
            printf("%s\t%.9g\t%s\n", argv[start + i], scores[i],
                   scores[i] >= threshold ? "anomalous" : "normal");
        if (maps_file && fwrite(maps, sizeof(float) * map_len, n, maps_file) != (size_t)n) {
            fprintf(stderr, "adrt_example: %s: write failed\n", maps_path);
            code = 2;
            goto done;
        }
    }
done:
    if (maps_file && fclose(maps_file) != 0 && code == 0)
        code = 2;
    free(images);
    free(maps);
    free(scores);
    if (det != 0 && (status = adrt_close(det)) != ADRT_OK && code == 0)
        code = report("adrt_close", status);
    return code;
}
