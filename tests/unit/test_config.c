/*
 * tests/unit/test_config.c — loading and validating parley.json
 * (core/config.c): the seed's file, the defaults, every key, and one
 * "FILE: KEY: REASON" line for each kind of mistake.
 */
#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <parley/common.h>

#include "config.h"

static char err[512];

static pl_config *parse(const char *text)
{
    err[0] = '\0';
    return pl_config_parse("parley.json", text, strlen(text), err, sizeof err);
}

/* The text must fail to load, and its one-line error must hold the file
 * name, the key and the reason. */
static void expect_error(const char *text, const char *key, const char *reason)
{
    pl_config *c = parse(text);
    ck_assert_msg(c == NULL, "config should be refused: %s", text);
    ck_assert_msg(strncmp(err, "parley.json: ", 13) == 0,
                  "error should start with the file name: \"%s\"", err);
    char want[256];
    snprintf(want, sizeof want, "parley.json: %s: ", key);
    ck_assert_msg(strstr(err, want) != NULL, "error should name key \"%s\": \"%s\"", key, err);
    ck_assert_msg(strstr(err, reason) != NULL, "error should say \"%s\": \"%s\"", reason, err);
    ck_assert_msg(strchr(err, '\n') == NULL, "error should be one line: \"%s\"", err);
}

START_TEST(seed_file)
{
    pl_config *c = parse("{\"servers\": [{\"host\": \"127.0.0.1\", \"port\": 8100},"
                         " {\"host\": \"127.0.0.1\", \"port\": 8101},"
                         " {\"host\": \"127.0.0.1\", \"port\": 8102}]}");
    ck_assert_msg(c != NULL, "the seed's file must load: %s", err);
    ck_assert_uint_eq(c->n_servers, 3);
    for (unsigned i = 0; i < 3; i++) {
        ck_assert_str_eq(c->servers[i].host, "127.0.0.1");
        ck_assert_uint_eq(c->servers[i].port, 8100 + i);
        ck_assert_msg(c->servers[i].peer_port == 9100 + i, "peer_port defaults to port+1000");
    }
    ck_assert_str_eq(c->path, "parley.json");
    pl_config_free(c);
}
END_TEST

static void check_defaults(const pl_config *c)
{
    ck_assert_str_eq(c->transport.name, "tcp");
    ck_assert_str_eq(c->transport.options_json, "{\"name\":\"tcp\"}");
    ck_assert_str_eq(c->store.name, "sqlite");
    ck_assert_str_eq(c->store.options_json, "{\"name\":\"sqlite\"}");
    ck_assert_ptr_null(c->data_dir);
    ck_assert_ptr_null(c->plugin_dir);
    ck_assert_int_eq(c->log_level, PL_LOG_INFO);
    ck_assert_uint_eq(c->max_frame, PL_FRAME_DEFAULT);
    ck_assert_uint_eq(c->election_timeout_ms, 1000);
    ck_assert_uint_eq(c->heartbeat_ms, 100);
    ck_assert_msg(c->pwhash_opslimit == 2, "default opslimit is libsodium INTERACTIVE (2)");
    ck_assert_msg(c->pwhash_memlimit == 64u * 1024 * 1024,
                  "default memlimit is libsodium INTERACTIVE (64 MiB)");
    ck_assert_uint_eq(c->hash_workers, 2);
    ck_assert_msg(c->sync_delay_us == 1000, "a 1 ms group commit delay by default");
    ck_assert_uint_eq(c->sync_delay_bytes, 4096);
}

START_TEST(defaults)
{
    pl_config *c = pl_config_default();
    ck_assert_ptr_nonnull(c);
    ck_assert_uint_eq(c->n_servers, 1);
    ck_assert_str_eq(c->servers[0].host, PL_DEFAULT_HOST);
    ck_assert_uint_eq(c->servers[0].port, PL_DEFAULT_PORT);
    ck_assert_uint_eq(c->servers[0].peer_port, PL_DEFAULT_PORT + PL_PEER_PORT_OFFSET);
    ck_assert_ptr_null(c->path);
    check_defaults(c);
    pl_config_free(c);

    c = parse("{\"servers\": [{\"host\": \"::1\", \"port\": 7000}]}");
    ck_assert_msg(c != NULL, "a minimal file loads: %s", err);
    check_defaults(c);
    pl_config_free(c);
}
END_TEST

START_TEST(every_key)
{
    pl_config *c = parse(
        "{\n"
        "  \"servers\": [{\"host\": \"10.0.0.1\", \"port\": 8100, \"peer_port\": 7100},\n"
        "              {\"host\": \"10.0.0.2\", \"port\": 8100}],\n"
        "  \"transport\": {\"name\": \"tcp\", \"codec\": \"json\"},\n"
        "  \"store\": \"json\",\n"
        "  \"data_dir\": \"/var/lib/parley\",\n"
        "  \"plugin_dir\": \"/opt/parley/plugins\",\n"
        "  \"log_level\": \"debug\",\n"
        "  \"max_frame\": 65536,\n"
        "  \"election_timeout_ms\": 2500,\n"
        "  \"heartbeat_ms\": 250,\n"
        "  \"password_hash\": {\"opslimit\": 3, \"memlimit\": 16777216},\n"
        "  \"hash_workers\": 4,\n"
        "  \"group_commit\": {\"delay_us\": 2500, \"bytes\": 16384}\n"
        "}\n");
    ck_assert_msg(c != NULL, "a file with every key loads: %s", err);
    ck_assert_uint_eq(c->n_servers, 2);
    ck_assert_str_eq(c->servers[0].host, "10.0.0.1");
    ck_assert_uint_eq(c->servers[0].peer_port, 7100);
    ck_assert_str_eq(c->servers[1].host, "10.0.0.2");
    ck_assert_msg(c->servers[1].port == 8100,
                  "the same port on another host is not a duplicate");
    ck_assert_uint_eq(c->servers[1].peer_port, 9100);
    ck_assert_str_eq(c->transport.name, "tcp");
    ck_assert_str_eq(c->store.name, "json");
    ck_assert_str_eq(c->store.options_json, "{\"name\":\"json\"}");
    ck_assert_str_eq(c->data_dir, "/var/lib/parley");
    ck_assert_str_eq(c->plugin_dir, "/opt/parley/plugins");
    ck_assert_int_eq(c->log_level, PL_LOG_DEBUG);
    ck_assert_uint_eq(c->max_frame, 65536);
    ck_assert_uint_eq(c->election_timeout_ms, 2500);
    ck_assert_uint_eq(c->heartbeat_ms, 250);
    ck_assert_uint_eq(c->pwhash_opslimit, 3);
    ck_assert_uint_eq(c->pwhash_memlimit, 16777216);
    ck_assert_uint_eq(c->hash_workers, 4);
    ck_assert_uint_eq(c->sync_delay_us, 2500);
    ck_assert_uint_eq(c->sync_delay_bytes, 16384);
    pl_config_free(c);
}
END_TEST

START_TEST(plugin_forms)
{
    pl_config *c = parse("{\"servers\": [{\"host\": \"h\", \"port\": 1}],"
                         " \"transport\": {\"name\": \"tcp\", \"codec\": \"json\"},"
                         " \"store\": {\"name\": \"sqlite\", \"sync\": false}}");
    ck_assert_msg(c != NULL, "plugin objects load: %s", err);
    ck_assert_str_eq(c->transport.name, "tcp");
    ck_assert_msg(strcmp(c->transport.options_json, "{\"name\":\"tcp\",\"codec\":\"json\"}") == 0,
                  "options_json is the whole object: %s", c->transport.options_json);
    ck_assert_str_eq(c->store.name, "sqlite");
    ck_assert_msg(strcmp(c->store.options_json, "{\"name\":\"sqlite\",\"sync\":false}") == 0,
                  "options_json is the whole object: %s", c->store.options_json);
    pl_config_free(c);

    c = parse("{\"servers\": [{\"host\": \"h\", \"port\": 1}],"
              " \"transport\": \"/opt/my \\\"odd\\\" transport.so\","
              " \"store\": \"./build/parley-store-json.so\"}");
    ck_assert_msg(c != NULL, "plugin paths load: %s", err);
    ck_assert_str_eq(c->transport.name, "/opt/my \"odd\" transport.so");
    ck_assert_msg(strcmp(c->transport.options_json,
                         "{\"name\":\"/opt/my \\\"odd\\\" transport.so\"}") == 0,
                  "a plain string becomes {\"name\":...} with JSON escaping: %s",
                  c->transport.options_json);
    ck_assert_str_eq(c->store.name, "./build/parley-store-json.so");
    ck_assert_str_eq(c->store.options_json, "{\"name\":\"./build/parley-store-json.so\"}");
    pl_config_free(c);
}
END_TEST

START_TEST(load_file)
{
    char path[] = "/tmp/parley-test-config-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    const char *text = "{\"servers\": [{\"host\": \"127.0.0.1\", \"port\": 8200}]}";
    ck_assert_int_eq(write(fd, text, strlen(text)), (int)strlen(text));
    close(fd);
    pl_config *c = pl_config_load(path, err, sizeof err);
    ck_assert_msg(c != NULL, "pl_config_load reads a file: %s", err);
    ck_assert_str_eq(c->path, path);
    ck_assert_uint_eq(c->servers[0].port, 8200);
    pl_config_free(c);
    unlink(path);

    c = pl_config_load("/nonexistent/parley.json", err, sizeof err);
    ck_assert_ptr_null(c);
    ck_assert_msg(strstr(err, "/nonexistent/parley.json: ") == err &&
                  strstr(err, "No such file") != NULL,
                  "a missing file names the file and the reason: %s", err);
}
END_TEST

START_TEST(not_json)
{
    expect_error("{\"servers\": [\n  {\"host\": \"a\" \"port\": 1}]}",
                 "line 2, column 16", "not valid JSON");
    expect_error("", "(top level)", "empty");
    expect_error("{\"servers\": []} trailing", "line 1, column 17", "not valid JSON");
    expect_error("[1, 2]", "(top level)", "must be a JSON object");
}
END_TEST

START_TEST(unknown_keys)
{
    expect_error("{\"servers\": [{\"host\": \"h\", \"port\": 1}], \"stroe\": \"json\"}",
                 "stroe", "unknown key");
    expect_error("{\"servers\": [{\"host\": \"h\", \"port\": 1},"
                 " {\"host\": \"h\", \"port\": 2, \"peer-port\": 3}]}",
                 "servers[1].peer-port", "unknown key");
    expect_error("{\"servers\": [{\"host\": \"h\", \"port\": 1}],"
                 " \"password_hash\": {\"opslimt\": 2}}",
                 "password_hash.opslimt", "unknown key");
    expect_error("{\"servers\": [{\"host\": \"h\", \"port\": 1}], \"log_level\": \"info\","
                 " \"log_level\": \"debug\"}",
                 "log_level", "duplicate key");
}
END_TEST

START_TEST(server_errors)
{
    expect_error("{}", "servers", "missing");
    expect_error("{\"servers\": {}}", "servers", "must be an array");
    expect_error("{\"servers\": []}", "servers", "at least one server");
    expect_error("{\"servers\": [8100]}", "servers[0]", "must be an object");
    expect_error("{\"servers\": [{\"port\": 1}]}", "servers[0].host", "missing");
    expect_error("{\"servers\": [{\"host\": \"\", \"port\": 1}]}", "servers[0].host",
                 "non-empty string");
    expect_error("{\"servers\": [{\"host\": \"h\"}]}", "servers[0].port", "missing");
    expect_error("{\"servers\": [{\"host\": \"h\", \"port\": 1}, {\"host\": \"h\", \"port\": 0}]}",
                 "servers[1].port", "must be an integer 1-65535");
    expect_error("{\"servers\": [{\"host\": \"h\", \"port\": 65536}]}",
                 "servers[0].port", "must be an integer 1-65535");
    expect_error("{\"servers\": [{\"host\": \"h\", \"port\": 80.5}]}",
                 "servers[0].port", "must be an integer 1-65535");
    expect_error("{\"servers\": [{\"host\": \"h\", \"port\": \"8100\"}]}",
                 "servers[0].port", "must be an integer 1-65535");
    expect_error("{\"servers\": [{\"host\": \"h\", \"port\": 1, \"peer_port\": -1}]}",
                 "servers[0].peer_port", "must be an integer 1-65535");
    expect_error("{\"servers\": [{\"host\": \"h\", \"port\": 65000}]}",
                 "servers[0].peer_port", "above 65535");
    expect_error("{\"servers\": [{\"host\": \"h\", \"port\": 5, \"peer_port\": 5}]}",
                 "servers[0].peer_port", "must differ from port");
    expect_error("{\"servers\": [{\"host\": \"h\", \"port\": 8100},"
                 " {\"host\": \"h\", \"port\": 8100}]}",
                 "servers[1].port", "h:8100 is already used by servers[0].port");
    expect_error("{\"servers\": [{\"host\": \"h\", \"port\": 8100},"
                 " {\"host\": \"h\", \"port\": 9100}]}",
                 "servers[1].port", "h:9100 is already used by servers[0].peer_port");
}
END_TEST

#define ONE "{\"servers\": [{\"host\": \"h\", \"port\": 1}], "

START_TEST(value_errors)
{
    expect_error(ONE "\"transport\": 5}", "transport", "plugin name or an object");
    expect_error(ONE "\"transport\": \"\"}", "transport", "plugin name or an object");
    expect_error(ONE "\"store\": {\"sync\": true}}", "store.name", "missing");
    expect_error(ONE "\"store\": {\"name\": 1}}", "store.name", "non-empty string");
    expect_error(ONE "\"data_dir\": \"\"}", "data_dir", "non-empty string");
    expect_error(ONE "\"plugin_dir\": 3}", "plugin_dir", "non-empty string");
    expect_error(ONE "\"log_level\": \"loud\"}", "log_level",
                 "\"error\", \"warn\", \"info\", \"debug\"");
    expect_error(ONE "\"max_frame\": 0}", "max_frame", "must be an integer 1024-");
    expect_error(ONE "\"election_timeout_ms\": 0}", "election_timeout_ms", "must be an integer");
    expect_error(ONE "\"heartbeat_ms\": 0}", "heartbeat_ms", "must be an integer");
    expect_error(ONE "\"heartbeat_ms\": 1000}", "heartbeat_ms",
                 "less than election_timeout_ms (1000)");
    expect_error(ONE "\"password_hash\": 2}", "password_hash", "must be an object");
    expect_error(ONE "\"password_hash\": {\"opslimit\": 0}}", "password_hash.opslimit",
                 "must be an integer 1-");
    expect_error(ONE "\"password_hash\": {\"memlimit\": 100}}", "password_hash.memlimit",
                 "must be an integer 8192-");
    expect_error(ONE "\"hash_workers\": 0}", "hash_workers", "must be an integer 1-64");
    expect_error(ONE "\"hash_workers\": 1e9}", "hash_workers", "must be an integer 1-64");
    expect_error(ONE "\"group_commit\": 1000}", "group_commit", "must be an object");
    expect_error(ONE "\"group_commit\": {\"delay_us\": 100001}}", "group_commit.delay_us",
                 "must be an integer 0-100000 (microseconds)");
    expect_error(ONE "\"group_commit\": {\"delay_us\": -1}}", "group_commit.delay_us",
                 "must be an integer 0-100000");
    expect_error(ONE "\"group_commit\": {\"bytes\": 0}}", "group_commit.bytes",
                 "must be an integer 1-67108864 (bytes)");
    expect_error(ONE "\"group_commit\": {\"delay\": 5}}", "group_commit.delay",
                 "unknown");
}
END_TEST

static void write_text(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot create %s", path);
    fputs(text, f);
    fclose(f);
    ck_assert_int_eq(chmod(path, mode), 0);
}

START_TEST(admin_token)
{
    pl_config *c = parse(ONE "\"admin\": {\"token\": \"0123456789abcdef\"}}");
    ck_assert_msg(c != NULL, "a 16-byte token loads: %s", err);
    ck_assert_str_eq(c->admin_token, "0123456789abcdef");
    pl_config_free(c);
    c = parse(ONE "\"admin\": {\"port_offset\": 100}}");
    ck_assert_msg(c != NULL && c->admin_token == NULL, "no token configured: %s", err);
    pl_config_free(c);

    expect_error(ONE "\"admin\": {\"token\": \"short\"}}", "admin.token",
                 "is 5 bytes; the token must be 16-256 bytes");
    char big[400];
    int n = snprintf(big, sizeof big, ONE "\"admin\": {\"token\": \"");
    memset(big + n, 'a', 257);
    snprintf(big + n + 257, sizeof big - (size_t)n - 257, "\"}}");
    expect_error(big, "admin.token", "is more than 256 bytes");
    expect_error(ONE "\"admin\": {\"token\": \"0123456789 abcdef\"}}", "admin.token",
                 "not printable ASCII");
    expect_error(ONE "\"admin\": {\"token\": \"0123456789\\nabcdef\"}}", "admin.token",
                 "not printable ASCII");
    expect_error(ONE "\"admin\": {\"token\": 12345678901234567}}", "admin.token",
                 "must be a string of 16-256 bytes");
    expect_error(ONE "\"admin\": {\"token\": \"0123456789abcdef\", \"token_file\": \"t\"}}",
                 "admin.token_file", "not both");
    expect_error(ONE "\"admin\": {\"token_file\": \"\"}}", "admin.token_file",
                 "non-empty string");
    expect_error(ONE "\"admin\": {\"token_file\": \"/nonexistent/tok\"}}", "admin.token_file",
                 "cannot open /nonexistent/tok: No such file");
    expect_error(ONE "\"admin\": {\"token_file\": \"/tmp\"}}", "admin.token_file",
                 "/tmp is not a regular file");

    /* token_file: relative to the config file, one trailing newline dropped. */
    char dir[] = "/tmp/parley-test-token-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char cfg[256], tok[256], log[256];
    snprintf(cfg, sizeof cfg, "%s/parley.json", dir);
    snprintf(tok, sizeof tok, "%s/admin.token", dir);
    snprintf(log, sizeof log, "%s/stderr", dir);
    write_text(cfg, ONE "\"admin\": {\"token_file\": \"admin.token\"}}", 0644);
    write_text(tok, "fedcba9876543210fedcba\r\n", 0600);
    c = pl_config_load(cfg, err, sizeof err);
    ck_assert_msg(c != NULL, "token_file loads: %s", err);
    ck_assert_str_eq(c->admin_token, "fedcba9876543210fedcba");
    pl_config_free(c);

    write_text(tok, "tooshort\n", 0600);
    ck_assert_ptr_null(pl_config_load(cfg, err, sizeof err));
    ck_assert_msg(strstr(err, "admin.token_file: ") && strstr(err, "admin.token holds 8 bytes"),
                  "short token file: %s", err);
    write_text(tok, "0123456789abcdef\n\n", 0600);
    ck_assert_ptr_null(pl_config_load(cfg, err, sizeof err));
    ck_assert_msg(strstr(err, "not printable ASCII"), "only one newline is dropped: %s", err);

    /* A token file others can read still loads, with a warning. */
    write_text(tok, "0123456789abcdef", 0644);
    fflush(stderr);
    int saved = dup(2), fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ck_assert_int_ge(fd, 0);
    dup2(fd, 2);
    close(fd);
    c = pl_config_load(cfg, err, sizeof err);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    ck_assert_msg(c != NULL, "a readable token file loads: %s", err);
    ck_assert_str_eq(c->admin_token, "0123456789abcdef");
    pl_config_free(c);
    char text[1024] = "";
    FILE *f = fopen(log, "rb");
    ck_assert_ptr_nonnull(f);
    size_t got = fread(text, 1, sizeof text - 1, f);
    text[got] = '\0';
    fclose(f);
    ck_assert_msg(strstr(text, "admin.token_file") && strstr(text, "chmod 600"),
                  "a group/other-readable token file is warned about: \"%s\"", text);
    unlink(log);
    unlink(tok);
    unlink(cfg);
    rmdir(dir);
}
END_TEST

/* TLS for clients reaches every listener: the main transport and each of
 * "transports" get the same "tls" member (a transport that cannot do TLS
 * then refuses it at start), and an entry may not set it itself. */
START_TEST(tls_every_transport)
{
    pl_config *c = parse("{\"servers\": [{\"host\": \"127.0.0.1\", \"port\": 8100}],"
                         " \"tls\": {\"cert\": \"/c.pem\", \"key\": \"/k.pem\"},"
                         " \"transports\": [{\"name\": \"ws\", \"port_offset\": 3000}]}");
    ck_assert_msg(c != NULL, "transports with tls must load: %s", err);
    ck_assert_uint_eq(c->n_transports, 1);
    ck_assert_uint_eq(c->transports[0].port_offset, 3000);
    ck_assert_msg(strstr(c->transport.options_json, "\"cert\":\"/c.pem\"") != NULL,
                  "main transport lacks tls: %s", c->transport.options_json);
    ck_assert_msg(strstr(c->transports[0].plugin.options_json, "\"tls\":{\"cert\":\"/c.pem\"") != NULL,
                  "transports[0] lacks tls: %s", c->transports[0].plugin.options_json);
    ck_assert_msg(strstr(c->transports[0].plugin.options_json, "port_offset") == NULL,
                  "port_offset must not reach the plugin: %s", c->transports[0].plugin.options_json);
    pl_config_free(c);
    expect_error("{\"servers\": [{\"host\": \"127.0.0.1\", \"port\": 8100}],"
                 " \"tls\": {\"cert\": \"/c.pem\", \"key\": \"/k.pem\"},"
                 " \"transports\": [{\"name\": \"ws\", \"port_offset\": 3000, \"tls\": {}}]}",
                 "transports[0].tls", "top-level");
}
END_TEST

/* The lines of err, split in place; returns how many. */
static int split_lines(char *text, char *lines[], int max)
{
    int n = 0;
    for (char *l = text; *l && n < max;) {
        lines[n++] = l;
        char *nl = strchr(l, '\n');
        if (!nl)
            break;
        *nl = '\0';
        l = nl + 1;
    }
    return n;
}

/* Issue 21: a file with several mistakes gets every one of them, one
 * "FILE: KEY: REASON" line each, in the order of the checks. */
START_TEST(every_error)
{
    static char big[8192];
    const char *text =
        "{\"servers\": [{\"host\": \"h\", \"port\": 70000}],"
        " \"log_level\": \"loud\","
        " \"stroe\": \"json\"}";
    pl_config *c = pl_config_parse("parley.json", text, strlen(text), big, sizeof big);
    ck_assert_msg(c == NULL, "a file with three mistakes must be refused");
    char *lines[8];
    int n = split_lines(big, lines, 8);
    ck_assert_msg(n == 3, "three mistakes give three lines, got %d: \"%s\"", n, big);
    ck_assert_msg(strcmp(lines[0], "parley.json: stroe: unknown key") == 0, "line 1: %s", lines[0]);
    ck_assert_msg(strcmp(lines[1], "parley.json: servers[0].port: must be an integer 1-65535") == 0,
                  "line 2: %s", lines[1]);
    ck_assert_msg(strncmp(lines[2], "parley.json: log_level: must be one of", 38) == 0,
                  "line 3: %s", lines[2]);
}
END_TEST

/* Parsing goes on inside every object too: each server entry, each limit,
 * the tls object, each extra transport. */
START_TEST(every_error_nested)
{
    static char big[8192];
    const char *text =
        "{\"servers\": [{\"host\": \"\", \"port\": 1}, {\"host\": \"h\"},"
        "              {\"host\": \"h\", \"port\": 3, \"prot\": 4}],"
        " \"limits\": {\"held_total\": 0, \"conns_per_address\": -1},"
        " \"tls\": {\"cert\": \"/c.pem\", \"peer\": 1},"
        " \"transports\": [{\"name\": \"ws\"}, 7],"
        " \"heartbeat_ms\": 5000}";
    pl_config *c = pl_config_parse("parley.json", text, strlen(text), big, sizeof big);
    ck_assert_ptr_null(c);
    static const char *const want[] = {
        "parley.json: servers[0].host: must be a non-empty string",
        "parley.json: servers[1].port: missing",
        "parley.json: servers[2].prot: unknown key",
        "parley.json: heartbeat_ms: 5000 must be less than election_timeout_ms (1000)",
        "parley.json: limits.conns_per_address: must be an integer",
        "parley.json: limits.held_total: must be an integer",
        "parley.json: tls.peer: must be true or false",
        "parley.json: tls.key: missing",
        "parley.json: transports[0].port_offset: missing",
        "parley.json: transports[1]: must be an object",
    };
    char *lines[16];
    int n = split_lines(big, lines, 16);
    ck_assert_msg(n == (int)(sizeof want / sizeof want[0]), "want %zu lines, got %d: %s",
                  sizeof want / sizeof want[0], n, big);
    for (int i = 0; i < n; i++)
        ck_assert_msg(strncmp(lines[i], want[i], strlen(want[i])) == 0,
                      "line %d: want \"%s...\", got \"%s\"", i + 1, want[i], lines[i]);
}
END_TEST

/* Lines that do not fit are counted, never cut in the middle. */
START_TEST(every_error_overflow)
{
    char small[120];
    const char *text = "{\"servers\": [{\"host\": \"h\", \"port\": 1}],"
                       " \"a1\": 1, \"a2\": 2, \"a3\": 3, \"a4\": 4, \"a5\": 5}";
    pl_config *c = pl_config_parse("parley.json", text, strlen(text), small, sizeof small);
    ck_assert_ptr_null(c);
    char *lines[8];
    int n = split_lines(small, lines, 8);
    ck_assert_msg(n >= 2, "at least one error and the note: %s", small);
    for (int i = 0; i < n - 1; i++)
        ck_assert_msg(strstr(lines[i], ": unknown key") != NULL, "whole line %d: %s", i, lines[i]);
    char want[64];
    snprintf(want, sizeof want, "parley.json: (more): %d more errors not shown", 5 - (n - 1));
    ck_assert_msg(strcmp(lines[n - 1], want) == 0, "last line \"%s\", want \"%s\"",
                  lines[n - 1], want);
}
END_TEST

/* --check-config's entry point: the configuration comes back with the
 * errors counted, so the plugins it names can still be checked. */
START_TEST(check_keeps_config)
{
    char path[] = "/tmp/parley-test-check-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    const char *text = "{\"servers\": [{\"host\": \"h\", \"port\": 1}], \"store\": \"json\","
                       " \"max_frame\": 1, \"hash_workers\": 0}";
    ck_assert_int_eq(write(fd, text, strlen(text)), (int)strlen(text));
    close(fd);
    static char big[4096];
    unsigned nerr = 99;
    pl_config *c = pl_config_check(path, big, sizeof big, &nerr);
    ck_assert_msg(c != NULL, "a readable JSON file comes back: %s", big);
    ck_assert_msg(nerr == 2, "two errors counted, got %u: %s", nerr, big);
    ck_assert_str_eq(c->store.name, "json");
    ck_assert_msg(strchr(big, '\n') != NULL, "two lines: %s", big);
    pl_config_free(c);
    ck_assert_ptr_null(pl_config_load(path, big, sizeof big));
    unlink(path);
    nerr = 0;
    ck_assert_ptr_null(pl_config_check("/nonexistent/p.json", big, sizeof big, &nerr));
    ck_assert_msg(nerr == 1 && strstr(big, "No such file"), "unreadable: %u %s", nerr, big);
}
END_TEST

START_TEST(error_truncation)
{
    /* A tiny buffer gets a truncated but terminated message, never overflow. */
    char small[16];
    memset(small, 'x', sizeof small);
    pl_config *c = pl_config_parse("parley.json", "{}", 2, small, sizeof small);
    ck_assert_ptr_null(c);
    ck_assert_msg(memchr(small, '\0', sizeof small) != NULL, "error is NUL-terminated");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, seed_file);
    tcase_add_test(tc, defaults);
    tcase_add_test(tc, every_key);
    tcase_add_test(tc, plugin_forms);
    tcase_add_test(tc, load_file);
    tcase_add_test(tc, not_json);
    tcase_add_test(tc, unknown_keys);
    tcase_add_test(tc, server_errors);
    tcase_add_test(tc, value_errors);
    tcase_add_test(tc, tls_every_transport);
    tcase_add_test(tc, admin_token);
    tcase_add_test(tc, error_truncation);
    tcase_add_test(tc, every_error);
    tcase_add_test(tc, every_error_nested);
    tcase_add_test(tc, every_error_overflow);
    tcase_add_test(tc, check_keeps_config);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
