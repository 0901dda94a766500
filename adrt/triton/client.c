/* A C client for a Triton model written by `adrt triton`: KServe v2 HTTP/REST with Triton's
 * binary-data extension, plain POSIX sockets (no library needed).
 *
 *   cc -O2 -o triton_client client.c
 *   ./triton_client 127.0.0.1 8000 bottle a.ppm b.ppm      # "path<TAB>score<TAB>max map" per image
 *
 * Each image is a binary PPM (P6, maxval 255) at the model's input size, sent as uint8 1xHxWx3.
 * The request is a JSON header followed by the raw image bytes (Inference-Header-Content-Length
 * says where the JSON ends); the response is a JSON header followed by the requested outputs,
 * raw little-endian float32, in the order the JSON lists them with their binary_data_size.
 * A request Triton refuses (wrong size, unknown model) prints its error and exits with 1.
 */
#define _GNU_SOURCE /* strcasestr */
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static unsigned char *read_ppm(const char *path, int *h, int *w)
{
    FILE *f = fopen(path, "rb");
    int maxval;
    unsigned char *px;
    if (!f)
        return NULL;
    if (fscanf(f, "P6 %d %d %d", w, h, &maxval) != 3 || maxval != 255 || fgetc(f) == EOF) {
        fclose(f);
        return NULL;
    }
    px = malloc((size_t)*h * *w * 3);
    if (px && fread(px, 1, (size_t)*h * *w * 3, f) != (size_t)*h * *w * 3) {
        free(px);
        px = NULL;
    }
    fclose(f);
    return px;
}

static int connect_to(const char *host, const char *port)
{
    struct addrinfo hints = {0}, *res, *r;
    int fd = -1;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, port, &hints, &res) != 0)
        return -1;
    for (r = res; r; r = r->ai_next) {
        fd = socket(r->ai_family, r->ai_socktype, r->ai_protocol);
        if (fd >= 0 && connect(fd, r->ai_addr, r->ai_addrlen) == 0)
            break;
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

static int send_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n) {
        ssize_t k = send(fd, p, n, 0);
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* The whole response (the server closes the connection after it); *n gets its length. */
static char *recv_all(int fd, size_t *n)
{
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1);
    ssize_t k;
    while (buf && (k = recv(fd, buf + len, cap - len, 0)) > 0) {
        len += (size_t)k;
        if (len == cap) {
            char *bigger = realloc(buf, 2 * cap + 1);
            if (!bigger) {
                free(buf);
                return NULL;
            }
            buf = bigger;
            cap *= 2;
        }
    }
    if (buf)
        buf[len] = 0;
    *n = len;
    return buf;
}

static long header_value(const char *head, const char *name)
{
    const char *p = strcasestr(head, name);
    return p ? strtol(p + strlen(name), NULL, 10) : -1;
}

/* Offset of output `name`'s bytes after the JSON header, and its size, from the JSON alone. */
static int find_output(const char *json, size_t json_len, const char *name, size_t *offset, size_t *size)
{
    char key[128];
    const char *p = json, *end = json + json_len;
    size_t at = 0;
    snprintf(key, sizeof key, "\"name\":\"%s\"", name);
    while ((p = strstr(p, "{\"name\":\"")) && p < end) {
        const char *s = strstr(p, "\"binary_data_size\":");
        size_t k;
        if (!s || s >= end)
            return -1;
        k = strtoul(s + strlen("\"binary_data_size\":"), NULL, 10);
        if (strncmp(p + 1, key, strlen(key)) == 0) {
            *offset = at;
            *size = k;
            return 0;
        }
        at += k;
        p = s;
    }
    return -1;
}

int main(int argc, char **argv)
{
    int i;
    if (argc < 5) {
        fprintf(stderr, "usage: %s HOST PORT MODEL IMAGE.ppm...\n", argv[0]);
        return 2;
    }
    for (i = 4; i < argc; i++) {
        int h, w, fd;
        size_t nbytes, len, body_len, off, sz, k;
        char json[512], head[512], *resp, *body;
        long status, json_len;
        float score, maxmap = 0;
        unsigned char *img = read_ppm(argv[i], &h, &w);
        if (!img) {
            fprintf(stderr, "%s: not a binary PPM (P6, maxval 255)\n", argv[i]);
            return 1;
        }
        nbytes = (size_t)h * w * 3;
        snprintf(json, sizeof json,
                 "{\"inputs\":[{\"name\":\"image\",\"shape\":[1,%d,%d,3],\"datatype\":\"UINT8\","
                 "\"parameters\":{\"binary_data_size\":%zu}}],\"outputs\":["
                 "{\"name\":\"score\",\"parameters\":{\"binary_data\":true}},"
                 "{\"name\":\"anomaly_map\",\"parameters\":{\"binary_data\":true}}]}", h, w, nbytes);
        snprintf(head, sizeof head,
                 "POST /v2/models/%s/infer HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/octet-stream\r\n"
                 "Inference-Header-Content-Length: %zu\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
                 argv[3], argv[1], argv[2], strlen(json), strlen(json) + nbytes);
        fd = connect_to(argv[1], argv[2]);
        if (fd < 0 || send_all(fd, head, strlen(head)) || send_all(fd, json, strlen(json)) ||
            send_all(fd, img, nbytes)) {
            fprintf(stderr, "cannot send to %s:%s\n", argv[1], argv[2]);
            return 1;
        }
        free(img);
        resp = recv_all(fd, &len);
        close(fd);
        body = resp ? strstr(resp, "\r\n\r\n") : NULL;
        if (!body) {
            fprintf(stderr, "no HTTP response from %s:%s\n", argv[1], argv[2]);
            return 1;
        }
        *body = 0;
        body += 4;
        body_len = len - (size_t)(body - resp);
        status = strtol(resp + strlen("HTTP/1.1 "), NULL, 10);
        if (status != 200) {
            fprintf(stderr, "%s: Triton answered %ld: %.*s\n", argv[i], status, (int)body_len, body);
            return 1;
        }
        json_len = header_value(resp, "Inference-Header-Content-Length:");
        if (json_len < 0 || (size_t)json_len > body_len ||
            find_output(body, (size_t)json_len, "score", &off, &sz) || sz != 4 ||
            (size_t)json_len + off + sz > body_len) {
            fprintf(stderr, "%s: unexpected response: %.*s\n", argv[i], (int)body_len, body);
            return 1;
        }
        memcpy(&score, body + json_len + off, 4);
        if (find_output(body, (size_t)json_len, "anomaly_map", &off, &sz) == 0 &&
            (size_t)json_len + off + sz <= body_len) {
            for (k = 0; k < sz / 4; k++) {
                float v;
                memcpy(&v, body + json_len + off + 4 * k, 4);
                if (k == 0 || v > maxmap)
                    maxmap = v;
            }
        }
        printf("%s\t%.6f\t%.6f\n", argv[i], score, maxmap);
        free(resp);
    }
    return 0;
}
