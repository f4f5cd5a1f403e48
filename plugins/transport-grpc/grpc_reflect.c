/*
 * grpc_reflect.c — gRPC server reflection (grpc.reflection.v1 and v1alpha,
 * whose messages are the same on the wire): what grpcurl, evans and Postman
 * ask to list and call chat.ChatService without a .proto file.
 *
 * The answers come from a FileDescriptorSet built at build time by protoc
 * from proto/chat.proto and grpc-proto's health and reflection protos, and
 * embedded by embed_descriptors.py (gr_descriptor_set). Its files are
 * indexed once: names, packages, and every symbol a reflection client may
 * ask for (services, methods, messages and enums, nested ones too). Each
 * file is served as its own serialized FileDescriptorProto, exactly the
 * bytes protoc wrote.
 *
 * The set is ours, not the network's, but is still read with bounds checks:
 * a set that does not parse makes gr_reflect_new fail, never read past it.
 * Requests come from the network: unpacked by protobuf-c, answered with an
 * ErrorResponse when they ask for something unknown.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc_int.h"
#include "reflection.pb-c.h"

extern const uint8_t gr_descriptor_set[];
extern const size_t gr_descriptor_set_len;

#define GR_SYM_MAX 256u

typedef struct gr_file {
    const uint8_t *data;      /* one FileDescriptorProto, inside gr_descriptor_set */
    size_t len;
    char *name;
} gr_file;

typedef struct gr_sym {
    char *name;               /* fully qualified, no leading dot */
    uint32_t file;
    int message;              /* a message type (all_extension_numbers_of_type) */
} gr_sym;

struct gr_reflect {
    gr_file *files;
    uint32_t n_files;
    gr_sym *syms;
    uint32_t n_syms, cap_syms;
    char **services;
    uint32_t n_services;
};

/* ------------------------------------------------------ wire reading */

typedef struct rd {
    const uint8_t *p, *end;
} rd;

static int rd_varint(rd *r, uint64_t *v)
{
    uint64_t x = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        if (r->p >= r->end)
            return -1;
        uint8_t b = *r->p++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return -1;
}

/* The next field: its number, and for length-delimited ones the bytes.
 * Returns 1 with a field, 0 at the end, -1 on bytes that do not parse. */
static int rd_field(rd *r, uint32_t *num, rd *val)
{
    uint64_t key, v;
    if (r->p >= r->end)
        return 0;
    if (rd_varint(r, &key) != 0)
        return -1;
    *num = (uint32_t)(key >> 3);
    val->p = val->end = NULL;
    switch (key & 7) {
    case 0:
        return rd_varint(r, &v) == 0 ? 1 : -1;
    case 1:
        if (r->end - r->p < 8)
            return -1;
        r->p += 8;
        return 1;
    case 2:
        if (rd_varint(r, &v) != 0 || v > (uint64_t)(r->end - r->p))
            return -1;
        val->p = r->p;
        val->end = r->p + v;
        r->p += v;
        return 1;
    case 5:
        if (r->end - r->p < 4)
            return -1;
        r->p += 4;
        return 1;
    default:
        return -1;
    }
}

/* ------------------------------------------------------------- index */

static int add_sym(gr_reflect *g, const char *prefix, rd name, uint32_t file, int message,
                   char *out, size_t outlen)
{
    size_t nl = (size_t)(name.end - name.p);
    int w = snprintf(out, outlen, "%s%s%.*s", prefix, *prefix ? "." : "", (int)nl,
                     (const char *)name.p);
    if (w < 0 || (size_t)w >= outlen)
        return -1;
    if (g->n_syms == g->cap_syms) {
        uint32_t cap = g->cap_syms ? 2 * g->cap_syms : 64;
        gr_sym *n = realloc(g->syms, cap * sizeof *n);
        if (!n)
            return -1;
        g->syms = n;
        g->cap_syms = cap;
    }
    if (!(g->syms[g->n_syms].name = strdup(out)))
        return -1;
    g->syms[g->n_syms].file = file;
    g->syms[g->n_syms].message = message;
    g->n_syms++;
    return 0;
}

/* The name (field 1) of a DescriptorProto, EnumDescriptorProto,
 * ServiceDescriptorProto or MethodDescriptorProto. */
static int name_of(rd m, rd *name)
{
    uint32_t num;
    rd v;
    int k;
    while ((k = rd_field(&m, &num, &v)) == 1)
        if (num == 1 && v.p) {
            *name = v;
            return 0;
        }
    return -1;
}

/* DescriptorProto: name 1, nested_type 3, enum_type 4. */
static int index_message(gr_reflect *g, const char *prefix, rd m, uint32_t file, int depth)
{
    char full[GR_SYM_MAX];
    rd name, v;
    uint32_t num;
    int k;
    if (depth > 32 || name_of(m, &name) != 0 || add_sym(g, prefix, name, file, 1, full, sizeof full) != 0)
        return -1;
    while ((k = rd_field(&m, &num, &v)) == 1) {
        if (num == 3 && v.p && index_message(g, full, v, file, depth + 1) != 0)
            return -1;
        if (num == 4 && v.p) {
            char e[GR_SYM_MAX];
            rd en;
            if (name_of(v, &en) != 0 || add_sym(g, full, en, file, 0, e, sizeof e) != 0)
                return -1;
        }
    }
    return k;
}

/* ServiceDescriptorProto: name 1, method 2 (MethodDescriptorProto: name 1). */
static int index_service(gr_reflect *g, const char *pkg, rd s, uint32_t file)
{
    char full[GR_SYM_MAX], meth[GR_SYM_MAX];
    rd name, v, mn;
    uint32_t num;
    int k;
    if (name_of(s, &name) != 0 || add_sym(g, pkg, name, file, 0, full, sizeof full) != 0)
        return -1;
    char **n = realloc(g->services, (g->n_services + 1) * sizeof *n);
    if (!n)
        return -1;
    g->services = n;
    if (!(g->services[g->n_services] = strdup(full)))
        return -1;
    g->n_services++;
    while ((k = rd_field(&s, &num, &v)) == 1)
        if (num == 2 && v.p && (name_of(v, &mn) != 0 ||
                                add_sym(g, full, mn, file, 0, meth, sizeof meth) != 0))
            return -1;
    return k;
}

/* FileDescriptorProto: name 1, package 2, message_type 4, enum_type 5,
 * service 6. */
static int index_file(gr_reflect *g, uint32_t i)
{
    rd f = { g->files[i].data, g->files[i].data + g->files[i].len }, v, name;
    char pkg[GR_SYM_MAX] = "";
    uint32_t num;
    int k;
    /* The package first: symbols are qualified by it wherever it stands. */
    rd scan = f;
    while ((k = rd_field(&scan, &num, &v)) == 1) {
        if (num == 1 && v.p && !g->files[i].name &&
            !(g->files[i].name = strndup((const char *)v.p, (size_t)(v.end - v.p))))
            return -1;
        if (num == 2 && v.p) {
            if ((size_t)(v.end - v.p) >= sizeof pkg)
                return -1;
            memcpy(pkg, v.p, (size_t)(v.end - v.p));
            pkg[v.end - v.p] = 0;
        }
    }
    if (k != 0 || !g->files[i].name)
        return -1;
    while ((k = rd_field(&f, &num, &v)) == 1) {
        if (!v.p)
            continue;
        if (num == 4 && index_message(g, pkg, v, i, 0) != 0)
            return -1;
        if (num == 6 && index_service(g, pkg, v, i) != 0)
            return -1;
        if (num == 5) {
            char e[GR_SYM_MAX];
            if (name_of(v, &name) != 0 || add_sym(g, pkg, name, i, 0, e, sizeof e) != 0)
                return -1;
        }
    }
    return k;
}

void gr_reflect_free(gr_reflect *g)
{
    if (!g)
        return;
    for (uint32_t i = 0; i < g->n_files; i++)
        free(g->files[i].name);
    for (uint32_t i = 0; i < g->n_syms; i++)
        free(g->syms[i].name);
    for (uint32_t i = 0; i < g->n_services; i++)
        free(g->services[i]);
    free(g->files);
    free(g->syms);
    free(g->services);
    free(g);
}

gr_reflect *gr_reflect_new(void)
{
    gr_reflect *g = calloc(1, sizeof *g);
    rd set = { gr_descriptor_set, gr_descriptor_set + gr_descriptor_set_len }, v;
    uint32_t num;
    int k;

    if (!g)
        return NULL;
    /* FileDescriptorSet: file 1, repeated. */
    while ((k = rd_field(&set, &num, &v)) == 1) {
        if (num != 1 || !v.p)
            continue;
        gr_file *n = realloc(g->files, (g->n_files + 1) * sizeof *n);
        if (!n)
            goto fail;
        g->files = n;
        g->files[g->n_files] = (gr_file){ v.p, (size_t)(v.end - v.p), NULL };
        g->n_files++;
        if (index_file(g, g->n_files - 1) != 0)
            goto fail;
    }
    if (k != 0)
        goto fail;
    return g;
fail:
    gr_reflect_free(g);
    return NULL;
}

/* ------------------------------------------------------------ answers */

/* A name from the network in an error text: printable ASCII only (the
 * text is a proto3 string, which must be UTF-8), at most 200 bytes. */
static const char *shown(const char *name, char *buf, size_t len)
{
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)(name ? name : ""); *p && o + 1 < len &&
         o < 200; p++)
        buf[o++] = *p >= 0x20 && *p < 0x7f ? (char)*p : '?';
    buf[o] = 0;
    return buf;
}

static const gr_sym *find_sym(const gr_reflect *g, const char *name)
{
    if (name && name[0] == '.')
        name++;
    for (uint32_t i = 0; name && i < g->n_syms; i++)
        if (strcmp(g->syms[i].name, name) == 0)
            return &g->syms[i];
    return NULL;
}

int gr_reflect_answer(const gr_reflect *g, const uint8_t *req, size_t len, uint8_t **out,
                      size_t *outlen)
{
    Grpc__Reflection__V1__ServerReflectionRequest *q =
        (Grpc__Reflection__V1__ServerReflectionRequest *)protobuf_c_message_unpack(
            &grpc__reflection__v1__server_reflection_request__descriptor, NULL, len, req);
    Grpc__Reflection__V1__ServerReflectionResponse r =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__INIT;
    Grpc__Reflection__V1__FileDescriptorResponse fd =
        GRPC__REFLECTION__V1__FILE_DESCRIPTOR_RESPONSE__INIT;
    Grpc__Reflection__V1__ListServiceResponse ls = GRPC__REFLECTION__V1__LIST_SERVICE_RESPONSE__INIT;
    Grpc__Reflection__V1__ExtensionNumberResponse en =
        GRPC__REFLECTION__V1__EXTENSION_NUMBER_RESPONSE__INIT;
    Grpc__Reflection__V1__ErrorResponse er = GRPC__REFLECTION__V1__ERROR_RESPONSE__INIT;
    Grpc__Reflection__V1__ExtensionRequest ext = GRPC__REFLECTION__V1__EXTENSION_REQUEST__INIT;
    Grpc__Reflection__V1__ServiceResponse *svc = NULL, **svcp = NULL;
    ProtobufCBinaryData blob;
    char text[GR_SYM_MAX + 64], nm[GR_SYM_MAX];
    int rc = PL_ERR_NOMEM;

    *out = NULL;
    *outlen = 0;
    if (!q)
        return PL_ERR_MALFORMED;
    /* The request echoed as we understood it: fields we do not know (kept
     * by protobuf-c as unknown fields) are not sent back, since what a
     * client sent under field number 0 would make our answer undecodable. */
    Grpc__Reflection__V1__ServerReflectionRequest orig =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    orig.host = q->host;
    orig.message_request_case = q->message_request_case;
    switch (q->message_request_case) {
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME:
        orig.file_by_filename = q->file_by_filename;
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL:
        orig.file_containing_symbol = q->file_containing_symbol;
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION:
        if (q->file_containing_extension) {
            ext.containing_type = q->file_containing_extension->containing_type;
            ext.extension_number = q->file_containing_extension->extension_number;
        }
        orig.file_containing_extension = &ext;
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE:
        orig.all_extension_numbers_of_type = q->all_extension_numbers_of_type;
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES:
        orig.list_services = q->list_services;
        break;
    default:
        orig.message_request_case = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST__NOT_SET;
        break;
    }
    r.valid_host = q->host;
    r.original_request = &orig;
    er.error_code = GR_NOT_FOUND;
    er.error_message = text;
    r.message_response_case = GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
    r.error_response = &er;

    const gr_file *file = NULL;
    switch (q->message_request_case) {
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME:
        for (uint32_t i = 0; i < g->n_files && !file; i++)
            if (strcmp(g->files[i].name, q->file_by_filename) == 0)
                file = &g->files[i];
        if (!file)
            snprintf(text, sizeof text, "file not found: %s", shown(q->file_by_filename, nm, sizeof nm));
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL: {
        const gr_sym *s = find_sym(g, q->file_containing_symbol);
        if (s)
            file = &g->files[s->file];
        else
            snprintf(text, sizeof text, "symbol not found: %s",
                     shown(q->file_containing_symbol, nm, sizeof nm));
        break;
    }
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION:
        snprintf(text, sizeof text, "extension not found: none of the served files declares "
                 "extensions");
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE: {
        const gr_sym *s = find_sym(g, q->all_extension_numbers_of_type);
        if (s && s->message) {
            en.base_type_name = s->name;
            r.message_response_case =
                GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ALL_EXTENSION_NUMBERS_RESPONSE;
            r.all_extension_numbers_response = &en;
        } else {
            snprintf(text, sizeof text, "message type not found: %s",
                     shown(q->all_extension_numbers_of_type, nm, sizeof nm));
        }
        break;
    }
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES:
        if (g->n_services) {
            svc = calloc(g->n_services, sizeof *svc);
            svcp = calloc(g->n_services, sizeof *svcp);
            if (!svc || !svcp)
                goto done;
            for (uint32_t i = 0; i < g->n_services; i++) {
                grpc__reflection__v1__service_response__init(&svc[i]);
                svc[i].name = g->services[i];
                svcp[i] = &svc[i];
            }
        }
        ls.n_service = g->n_services;
        ls.service = svcp;
        r.message_response_case =
            GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE;
        r.list_services_response = &ls;
        break;
    default:
        er.error_code = GR_INVALID_ARGUMENT;
        snprintf(text, sizeof text, "empty reflection request: set one of file_by_filename, "
                 "file_containing_symbol, file_containing_extension, "
                 "all_extension_numbers_of_type, list_services");
        break;
    }
    if (file) {
        /* No served file imports another: the file alone is complete. */
        blob.data = (uint8_t *)(uintptr_t)file->data;
        blob.len = file->len;
        fd.n_file_descriptor_proto = 1;
        fd.file_descriptor_proto = &blob;
        r.message_response_case =
            GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE;
        r.file_descriptor_response = &fd;
    }
    size_t n = protobuf_c_message_get_packed_size(&r.base);
    if (!(*out = malloc(n ? n : 1)))
        goto done;
    *outlen = protobuf_c_message_pack(&r.base, *out);
    rc = PL_OK;
done:
    free(svc);
    free(svcp);
    protobuf_c_message_free_unpacked(&q->base, NULL);
    return rc;
}
