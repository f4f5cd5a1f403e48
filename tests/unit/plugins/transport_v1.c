/*
 * A transport plugin built for ABI version 1, before server_serving (v 2)
 * was appended to the descriptor: its descriptor is the v1 layout and ends
 * where v1 ended. The loader must load it (parley loads transports of
 * PL_TRANSPORT_ABI_MIN and up) without reading past it. Its functions are
 * never called: the test only loads it.
 */
#include <parley/transport.h>

/* pl_transport_plugin as version 1 declared it, member for member. */
typedef struct v1_transport_plugin {
    uint32_t abi_version;
    const char *name;
    const char *description;
    int (*server_start)(const pl_transport_host *, const pl_transport_options *,
                        pl_transport_server **, char *, size_t);
    void (*server_stop_accepting)(pl_transport_server *);
    void (*server_free)(pl_transport_server *);
    int (*conn_send)(pl_transport_conn *, const pl_response *);
    void (*conn_close)(pl_transport_conn *);
    int (*client_connect)(struct event_base *, const pl_transport_options *,
                          const pl_transport_client_cb *, void *, pl_transport_client **, char *,
                          size_t);
    int (*client_send)(pl_transport_client *, const pl_request *);
    void (*client_free)(pl_transport_client *);
    int (*encode_request)(const pl_transport_options *, const pl_request *, uint8_t **, size_t *);
    int (*encode_response)(const pl_transport_options *, const pl_response *, uint8_t **,
                           size_t *);
    int (*decode_request)(const pl_transport_options *, const uint8_t *, size_t, size_t *,
                          pl_request *, void **);
    int (*decode_response)(const pl_transport_options *, const uint8_t *, size_t, size_t *,
                           pl_response *, void **);
    void (*free_scratch)(void *);
} v1_transport_plugin;

static int v1_start(const pl_transport_host *h, const pl_transport_options *o,
                    pl_transport_server **out, char *err, size_t len)
{
    (void)h; (void)o; (void)out; (void)err; (void)len;
    return PL_ERR_UNSUPPORTED;
}
static void v1_srv(pl_transport_server *s) { (void)s; }
static int v1_send(pl_transport_conn *c, const pl_response *r) { (void)c; (void)r; return PL_ERR_UNSUPPORTED; }
static void v1_close(pl_transport_conn *c) { (void)c; }
static int v1_connect(struct event_base *b, const pl_transport_options *o,
                      const pl_transport_client_cb *cb, void *ud, pl_transport_client **out,
                      char *err, size_t len)
{
    (void)b; (void)o; (void)cb; (void)ud; (void)out; (void)err; (void)len;
    return PL_ERR_UNSUPPORTED;
}
static int v1_csend(pl_transport_client *c, const pl_request *r) { (void)c; (void)r; return PL_ERR_UNSUPPORTED; }
static void v1_cfree(pl_transport_client *c) { (void)c; }
static int v1_enc_req(const pl_transport_options *o, const pl_request *r, uint8_t **out, size_t *len)
{
    (void)o; (void)r; (void)out; (void)len;
    return PL_ERR_UNSUPPORTED;
}
static int v1_enc_resp(const pl_transport_options *o, const pl_response *r, uint8_t **out,
                       size_t *len)
{
    (void)o; (void)r; (void)out; (void)len;
    return PL_ERR_UNSUPPORTED;
}
static int v1_dec_req(const pl_transport_options *o, const uint8_t *b, size_t n, size_t *used,
                      pl_request *out, void **scratch)
{
    (void)o; (void)b; (void)n; (void)used; (void)out; (void)scratch;
    return PL_ERR_UNSUPPORTED;
}
static int v1_dec_resp(const pl_transport_options *o, const uint8_t *b, size_t n, size_t *used,
                       pl_response *out, void **scratch)
{
    (void)o; (void)b; (void)n; (void)used; (void)out; (void)scratch;
    return PL_ERR_UNSUPPORTED;
}
static void v1_scratch(void *p) { (void)p; }

static const v1_transport_plugin v1_plugin = {
    1, "v1", "test plugin of transport ABI version 1",
    v1_start, v1_srv, v1_srv, v1_send, v1_close, v1_connect, v1_csend, v1_cfree,
    v1_enc_req, v1_enc_resp, v1_dec_req, v1_dec_resp, v1_scratch,
};

PL_EXPORT const pl_transport_plugin *parley_transport_plugin(void);

const pl_transport_plugin *parley_transport_plugin(void)
{
    return (const pl_transport_plugin *)(const void *)&v1_plugin;
}
