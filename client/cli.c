/*
 * client/cli.c — the `parley` command-line client, built on libparley.
 *
 *   parley [-c CONFIG] [--server HOST:PORT] [--json] COMMAND [ARGS]
 *
 * Exit codes are part of the interface (scripts and the tests rely on them):
 *   0 success, 1 the server refused (or the input was refused before
 *   sending it), 2 usage error, 3 no server reachable.
 *
 * Output: human text by default; with --json exactly one JSON document per
 * command (listen: one object per line per message). Errors go to stderr as
 * "parley: MESSAGE"; with --json a {"error", "code"} document also goes to
 * stdout so a script reading stdout always gets one document.
 *
 * JSON documents (field names are stable):
 *   register       {"user"}                 login   {"user", "unread"}
 *   logout, delete-account {"ok": true}     send    {"id", "time"}
 *   unread         {"unread", "read"}       users   {"users": [names], "more"}
 *   read, history, conversation  {"messages": [MESSAGE...], "more"}; read -n N
 *                  adds "unread_left" when more remain; read without -n reads
 *                  every page, and a page that fails adds "error" and "code"
 *                  to the document of what was read before it
 *   ack / delete   {"acked": [ids]} / {"deleted": [ids]}
 *   status         {"servers": [{"id", "address", "reachable", "role", "view",
 *                   "op", "commit", "applied", "store", "transport", "digest"}]}
 *   listen         one MESSAGE per line
 *   MESSAGE        {"id", "from", "to", "body", "time" (Unix ms), "state":
 *                   "unread" | "read"}
 *   any error      {"error": TEXT, "code": pl_err number}
 *
 * The session token lives in a file ($PARLEY_SESSION, default
 * $XDG_STATE_HOME/parley/session or ~/.local/state/parley/session), mode
 * 0600 in a 0700 directory, because it is a bearer credential.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/event.h>
#include <sodium.h>

#include "admin.h"
#include "parley.h"
#include "tui.h"

enum {
    EXIT_REFUSED = 1,
    EXIT_USAGE = 2,
    EXIT_UNREACHABLE = 3
};

#define SESSION_MAX 1024u

typedef struct cli {
    const char *config;
    const char *server;
    int json;
    parley_client *c;
} cli;

/* ------------------------------------------------------------------ */
/* Usage                                                               */
/* ------------------------------------------------------------------ */

typedef struct cmd_help {
    const char *name;
    const char *synopsis;
    const char *text;
} cmd_help;

static const cmd_help HELP[] = {
    { "register", "register USER [--password-stdin]",
      "Create an account. The password (8-1024 bytes) is asked twice on the\n"
      "terminal without echo, or read as one line of stdin with --password-stdin.\n" },
    { "login", "login USER [--password-stdin]",
      "Log in, print the number of unread messages and keep the session token\n"
      "in $PARLEY_SESSION (default ~/.local/state/parley/session, mode 0600).\n" },
    { "logout", "logout",
      "Revoke the session token on the server and remove the session file.\n" },
    { "users", "users [PATTERN] [--offset N] [--limit N]",
      "List usernames matching PATTERN (* any run, ? one character; default\n"
      "all), sorted, one page at a time.\n" },
    { "send", "send USER MESSAGE...",
      "Send a message; the words of MESSAGE are joined by single spaces.\n" },
    { "unread", "unread", "Print the unread and read message counts.\n" },
    { "read", "read [-n N]",
      "Print the oldest N unread messages and mark them read. Without -n, every\n"
      "unread message, read page by page (a page holds at most 1000). With -n,\n"
      "when more remain, says how many are left.\n" },
    { "history", "history [--offset N] [--limit N]",
      "Print read messages, newest first, one page at a time.\n" },
    { "conversation", "conversation USER [--offset N] [--limit N]",
      "Print the messages between you and USER in both directions, newest first.\n" },
    { "ack", "ack ID...", "Mark messages read.\n" },
    { "delete", "delete ID...",
      "Delete messages from your view (the other party keeps its copy).\n" },
    { "delete-account", "delete-account [--password-stdin]",
      "Delete your account, mailbox and sessions after asking for the password.\n"
      "Messages you already sent stay with their recipients.\n" },
    { "listen", "listen",
      "Print messages as they arrive until interrupted (Ctrl-C exits 0), and\n"
      "mark what was printed read.\n" },
    { "status", "status",
      "Print every server: address, role, view, op and commit numbers.\n" },
};

#define N_HELP (sizeof HELP / sizeof HELP[0])

static void usage(FILE *f)
{
    fprintf(f,
        "usage: parley [-c CONFIG] [--server HOST:PORT] [--json] COMMAND [ARGS]\n"
        "       parley [-c CONFIG] [--server HOST:PORT]   (no command: the full-screen terminal UI)\n"
        "\n"
        "commands:\n"
        "  register USER        password from the terminal without echo (asked twice),\n"
        "                       or one line of stdin with --password-stdin\n"
        "  login USER           prints the unread count; stores the session token in\n"
        "                       $PARLEY_SESSION (default ~/.local/state/parley/session)\n"
        "  logout               revokes the session and removes the session file\n"
        "  users [PATTERN] [--offset N] [--limit N]\n"
        "  send USER MESSAGE... words joined by single spaces\n"
        "  unread               unread and read counts\n"
        "  read [-n N]          the oldest N unread messages (all by default), marked read\n"
        "  history [--offset N] [--limit N]\n"
        "  conversation USER [--offset N] [--limit N]\n"
        "  ack ID...\n"
        "  delete ID...\n"
        "  delete-account       asks for the password again (or --password-stdin)\n"
        "  listen               prints messages as they arrive until interrupted\n"
        "  status               each server: address, role, view, op, commit, applied, lag, digest\n"
        "  admin stats          per server: connections, requests/s, commit latency, log\n"
        "                       and store size, from each admin_port ('admin --help')\n"
        "  admin members        the cluster's membership: epoch, servers, primary\n"
        "  admin add-server HOST:PORT[:PEER_PORT], admin remove-server HOST:PORT[:PEER_PORT],\n"
        "  admin replace-server OLD NEW\n"
        "                       grow, shrink or repair the running cluster (admin.token;\n"
        "                       --timeout SECONDS, default 180)\n"
        "  admin import-prototype FILE [--rename OLD=NEW]... [--skip-invalid]\n"
        "                       move the Python prototype's state file in (admin.token)\n"
        "  admin export [-o FILE] [--no-sessions], admin import FILE [--resume]\n"
        "                       the whole chat state as a JSON Lines dump, and back into an\n"
        "                       empty cluster of any store (admin.token)\n"
        "\n"
        "options:\n"
        "  -c, --config CONFIG  the cluster's config file (default $PARLEY_CONFIG,\n"
        "                       else one server on 127.0.0.1:8100)\n"
        "  --server HOST:PORT   talk to this server only\n"
        "  --json               print one JSON document per command\n"
        "  -h, --help           this text; 'parley COMMAND --help' for one command\n"
        "\n"
        "exit status: 0 ok, 1 refused by the server, 2 usage error, 3 no server reachable\n");
}

static const cmd_help *help_for(const char *name)
{
    for (size_t i = 0; i < N_HELP; i++)
        if (strcmp(HELP[i].name, name) == 0)
            return &HELP[i];
    return NULL;
}

static int usage_error(const char *cmd, const char *fmt, ...) PL_PRINTF(2, 3);

/* A command-line mistake: say what, point at the help, exit 2. */
static int usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;

    fputs("parley: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (cmd)
        fprintf(stderr, "\nusage: parley %s\nTry 'parley %s --help'.\n",
                help_for(cmd)->synopsis, cmd);
    else
        fputs("\nTry 'parley --help'.\n", stderr);
    return EXIT_USAGE;
}

/* ------------------------------------------------------------------ */
/* Output helpers                                                      */
/* ------------------------------------------------------------------ */

/* Print bytes from the network on a terminal: control characters (C0, DEL
 * and the UTF-8 encoded C1 range, which terminals treat as escapes) are
 * shown as escapes, so a message cannot move the cursor or retitle the
 * window, and a message stays on one line. */
static void put_safe(FILE *f, const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;

    for (size_t i = 0; i < len; i++) {
        unsigned char ch = p[i];
        if (ch == '\n')
            fputs("\\n", f);
        else if (ch == '\t')
            fputc('\t', f);
        else if (ch < 0x20 || ch == 0x7f)
            fprintf(f, "\\x%02x", ch);
        else if (ch == 0xc2 && i + 1 < len && p[i + 1] >= 0x80 && p[i + 1] <= 0x9f) {
            fprintf(f, "\\u%04x", p[i + 1]);
            i++;
        } else
            fputc(ch, f);
    }
}

static void put_str(FILE *f, pl_str s)
{
    put_safe(f, s.ptr ? s.ptr : "", s.len);
}

static void format_time(uint64_t ms, char *buf, size_t len)
{
    time_t t = (time_t)(ms / 1000u);
    struct tm tm;

    if (!localtime_r(&t, &tm) || strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm) == 0)
        snprintf(buf, len, "%llu", (unsigned long long)ms);
}

static void print_message_line(const pl_message *m)
{
    char when[64];

    format_time(m->time_ms, when, sizeof when);
    printf("#%llu  %s  ", (unsigned long long)m->id, when);
    put_str(stdout, m->from);
    fputs(" -> ", stdout);
    put_str(stdout, m->to);
    fputs(": ", stdout);
    put_str(stdout, m->body);
    fputc('\n', stdout);
}

/* cJSON wants NUL-terminated strings, and a pushed message's pl_str points
 * into the transport's buffer without one: copy with the length. */
static void json_add_str(cJSON *o, const char *key, pl_str s)
{
    char *t = malloc((size_t)s.len + 1);

    if (!t)
        return;
    if (s.len)
        memcpy(t, s.ptr, s.len);
    t[s.len] = '\0';
    cJSON_AddStringToObject(o, key, t);
    free(t);
}

static cJSON *json_message(const pl_message *m)
{
    cJSON *o = cJSON_CreateObject();

    if (!o)
        return NULL;
    cJSON_AddNumberToObject(o, "id", (double)m->id);
    json_add_str(o, "from", m->from);
    json_add_str(o, "to", m->to);
    json_add_str(o, "body", m->body);
    cJSON_AddNumberToObject(o, "time", (double)m->time_ms);
    cJSON_AddStringToObject(o, "state", (m->state & PL_MSG_READ) ? "read" : "unread");
    return o;
}

/* Print doc (one document, pretty unless compact) and free it. */
static int json_print(cJSON *doc, int compact)
{
    char *text;

    if (!doc) {
        fprintf(stderr, "parley: out of memory\n");
        return EXIT_REFUSED;
    }
    text = compact ? cJSON_PrintUnformatted(doc) : cJSON_Print(doc);
    cJSON_Delete(doc);
    if (!text) {
        fprintf(stderr, "parley: out of memory\n");
        return EXIT_REFUSED;
    }
    puts(text);
    fflush(stdout);
    cJSON_free(text);
    return 0;
}

static int json_ok(void)
{
    cJSON *o = cJSON_CreateObject();

    if (o)
        cJSON_AddBoolToObject(o, "ok", 1);
    return json_print(o, 0);
}

/* An error from the library or the server: message on stderr, and under
 * --json an error document on stdout. Returns the exit code. */
static int fail_with(const cli *k, int err, const char *msg)
{
    fprintf(stderr, "parley: %s\n", msg);
    if (k->json) {
        cJSON *o = cJSON_CreateObject();
        if (o) {
            cJSON_AddStringToObject(o, "error", msg);
            cJSON_AddNumberToObject(o, "code", err);
            json_print(o, 0);
        }
    }
    return parley_unreachable(err) ? EXIT_UNREACHABLE : EXIT_REFUSED;
}

static int fail_call(const cli *k, int err)
{
    const char *msg = parley_last_error(k->c);

    /* An unreachable cluster: name the address that failed and say so. */
    if (err == PL_ERR_IO || err == PL_ERR_TIMEOUT) {
        char buf[700];
        snprintf(buf, sizeof buf, "no server reachable: %s", msg);
        return fail_with(k, err, buf);
    }
    if (parley_unreachable(err)) {
        char buf[700];
        snprintf(buf, sizeof buf, "no server can serve this now: %s", msg);
        return fail_with(k, err, buf);
    }
    return fail_with(k, err, msg);
}

/* Input refused before it was sent (same exit code as the server's refusal,
 * same wording as the server's limit message). */
static int refuse_local(const cli *k, int err, const char *detail)
{
    char buf[512];

    if (detail)
        snprintf(buf, sizeof buf, "%s: %s", detail, pl_strerror(err));
    else
        snprintf(buf, sizeof buf, "%s", pl_strerror(err));
    return fail_with(k, err, buf);
}

static int page_limit(const cli *k, const char *opt)
{
    char buf[128];

    snprintf(buf, sizeof buf, "%s must be at most %u", opt, PL_PAGE_MAX);
    return fail_with(k, PL_ERR_PAGE, buf);
}

/* ------------------------------------------------------------------ */
/* Input validation (friendlier errors; the server enforces anyway)    */
/* ------------------------------------------------------------------ */

static int valid_username(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > PL_USERNAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' || ch == '-'))
            return 0;
    }
    return 1;
}

static int valid_pattern(const char *s)
{
    size_t n = strlen(s);

    if (n > PL_PATTERN_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' || ch == '-' ||
              ch == '*' || ch == '?'))
            return 0;
    }
    return 1;
}

/* Strict UTF-8: no overlongs, no surrogates, nothing above U+10FFFF. */
static int valid_utf8(const unsigned char *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        unsigned char b = s[i];
        size_t need;
        uint32_t cp;

        if (b < 0x80) {
            i++;
            continue;
        } else if (b >= 0xc2 && b <= 0xdf) {
            need = 1;
            cp = b & 0x1f;
        } else if (b >= 0xe0 && b <= 0xef) {
            need = 2;
            cp = b & 0x0f;
        } else if (b >= 0xf0 && b <= 0xf4) {
            need = 3;
            cp = b & 0x07;
        } else {
            return 0;
        }
        if (n - i <= need)
            return 0;
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((need == 2 && cp < 0x800) || (need == 3 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += need + 1;
    }
    return 1;
}

static int parse_u64(const char *s, uint64_t *out)
{
    uint64_t v = 0;

    if (!s || !*s)
        return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        if (v > (UINT64_MAX - (uint64_t)(*s - '0')) / 10)
            return -1;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Command arguments                                                   */
/* ------------------------------------------------------------------ */

enum {
    OPT_PASSWORD_STDIN = 1,
    OPT_PAGE = 2,      /* --offset N --limit N */
    OPT_N = 4,         /* -n N */
    OPT_REST = 8       /* after the first positional everything is verbatim */
};

typedef struct args {
    const char **pos;
    int npos;
    int password_stdin;
    uint64_t offset, limit, n;
    int help;
} args;

/* Parse a command's arguments. Returns 0, or an exit code after printing a
 * usage error. */
static int parse_args(const char *cmd, int argc, char **argv, unsigned allowed, args *a)
{
    int only_pos = 0;

    memset(a, 0, sizeof a[0]);
    a->pos = calloc((size_t)argc + 1, sizeof *a->pos);
    if (!a->pos) {
        fprintf(stderr, "parley: out of memory\n");
        return EXIT_REFUSED;
    }
    for (int i = 0; i < argc; i++) {
        const char *s = argv[i];
        const char *val = NULL;
        uint64_t *dst = NULL;
        const char *name = NULL;

        if (only_pos || s[0] != '-' || s[1] == '\0') {
            a->pos[a->npos++] = s;
            if ((allowed & OPT_REST) && a->npos == 1)
                only_pos = 1;
            continue;
        }
        if (strcmp(s, "--") == 0) {
            only_pos = 1;
            continue;
        }
        if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0) {
            a->help = 1;
            return 0;
        }
        if ((allowed & OPT_PASSWORD_STDIN) && strcmp(s, "--password-stdin") == 0) {
            a->password_stdin = 1;
            continue;
        }
        if ((allowed & OPT_PAGE) && strncmp(s, "--offset", 8) == 0 &&
            (s[8] == '\0' || s[8] == '=')) {
            name = "--offset";
            dst = &a->offset;
            val = s[8] == '=' ? s + 9 : NULL;
        } else if ((allowed & OPT_PAGE) && strncmp(s, "--limit", 7) == 0 &&
                   (s[7] == '\0' || s[7] == '=')) {
            name = "--limit";
            dst = &a->limit;
            val = s[7] == '=' ? s + 8 : NULL;
        } else if ((allowed & OPT_N) && strncmp(s, "-n", 2) == 0) {
            name = "-n";
            dst = &a->n;
            val = s[2] ? s + 2 : NULL;
        } else if (strcmp(s, "--json") == 0 || strcmp(s, "--server") == 0 ||
                   strcmp(s, "-c") == 0 || strcmp(s, "--config") == 0) {
            return usage_error(cmd, "%s is a global option: put it before the command", s);
        } else {
            return usage_error(cmd, "unknown option %s", s);
        }
        if (!val) {
            if (i + 1 >= argc)
                return usage_error(cmd, "%s needs a number", name);
            val = argv[++i];
        }
        if (parse_u64(val, dst) != 0)
            return usage_error(cmd, "%s: \"%s\" is not a non-negative integer", name, val);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Passwords                                                           */
/* ------------------------------------------------------------------ */

static struct termios saved_tty;
static int saved_tty_fd = -1;

static void restore_tty(void)
{
    if (saved_tty_fd >= 0) {
        tcsetattr(saved_tty_fd, TCSAFLUSH, &saved_tty);
        saved_tty_fd = -1;
    }
}

/* Ctrl-C at the prompt must not leave the terminal without echo. */
static void prompt_signal(int sig)
{
    restore_tty();
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Read one line into buf (at most cap-1 bytes, NUL-terminated, trailing
 * CR/LF removed). Returns 0, 1 when the line is longer than cap-2 bytes,
 * -1 at end of input with nothing read. */
static int read_line(FILE *f, char *buf, size_t cap)
{
    size_t n;

    if (!fgets(buf, (int)cap, f))
        return -1;
    n = strlen(buf);
    if (n == cap - 1 && buf[n - 1] != '\n') {
        int ch;
        while ((ch = fgetc(f)) != EOF && ch != '\n')
            ;
        return 1;
    }
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = '\0';
    return 0;
}

/* Ask on the terminal without echo. Returns 0, 1 (too long), -1 (no tty or
 * end of input). */
static int ask_tty(const char *prompt, char *buf, size_t cap)
{
    FILE *tty = fopen("/dev/tty", "r+");
    struct termios t;
    struct sigaction sa, old_int, old_term;
    int rc;

    if (!tty)
        return -1;
    setvbuf(tty, NULL, _IONBF, 0);
    fputs(prompt, tty);
    if (tcgetattr(fileno(tty), &saved_tty) == 0) {
        t = saved_tty;
        t.c_lflag &= ~(tcflag_t)ECHO;
        t.c_lflag |= ECHONL;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = prompt_signal;
        sigaction(SIGINT, &sa, &old_int);
        sigaction(SIGTERM, &sa, &old_term);
        saved_tty_fd = fileno(tty);
        tcsetattr(saved_tty_fd, TCSAFLUSH, &t);
        rc = read_line(tty, buf, cap);
        restore_tty();
        sigaction(SIGINT, &old_int, NULL);
        sigaction(SIGTERM, &old_term, NULL);
    } else {
        rc = read_line(tty, buf, cap);
    }
    fclose(tty);
    return rc;
}

/* Get a password: one line of stdin (--password-stdin) or the terminal,
 * asked twice when confirm is set. buf has room for PL_PASSWORD_MAX + 2.
 * Returns 0 or an exit code after printing the reason. */
static int get_password(const cli *k, const args *a, int confirm, char *buf, size_t cap)
{
    int rc;

    if (a->password_stdin) {
        rc = read_line(stdin, buf, cap);
        if (rc < 0)
            return fail_with(k, PL_ERR_PASSWORD, "no password on stdin");
    } else {
        rc = ask_tty("Password: ", buf, cap);
        if (rc < 0) {
            fprintf(stderr, "parley: no terminal to ask for the password on; use --password-stdin\n");
            return EXIT_USAGE;
        }
        if (rc == 0 && confirm) {
            char again[PL_PASSWORD_MAX + 2];
            int rc2 = ask_tty("Password (again): ", again, sizeof again);
            int same = rc2 == 0 && strcmp(again, buf) == 0;
            sodium_memzero(again, sizeof again);
            if (!same)
                return fail_with(k, PL_ERR_PASSWORD, "the passwords do not match");
        }
    }
    if (rc == 1)
        return refuse_local(k, PL_ERR_PASSWORD, NULL);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Session file                                                        */
/* ------------------------------------------------------------------ */

static int session_path(char *buf, size_t len)
{
    const char *p = getenv("PARLEY_SESSION");
    const char *state = getenv("XDG_STATE_HOME");
    const char *home = getenv("HOME");
    int n;

    if (p && p[0])
        n = snprintf(buf, len, "%s", p);
    else if (state && state[0] == '/')
        n = snprintf(buf, len, "%s/parley/session", state);
    else if (home && home[0])
        n = snprintf(buf, len, "%s/.local/state/parley/session", home);
    else
        return -1;
    return n > 0 && (size_t)n < len ? 0 : -1;
}

/* mkdir -p for the parents of path, each created 0700. */
static int make_parents(const char *path)
{
    char dir[PATH_MAX];
    size_t n = strlen(path);

    if (n >= sizeof dir)
        return -1;
    memcpy(dir, path, n + 1);
    for (size_t i = 1; i < n; i++) {
        if (dir[i] != '/')
            continue;
        dir[i] = '\0';
        if (mkdir(dir, 0700) != 0 && errno != EEXIST)
            return -1;
        dir[i] = '/';
    }
    return 0;
}

/* Write "TOKEN\nUSER\n" atomically (temp file + rename), mode 0600. */
static int session_save(const char *token, const char *user, char *err, size_t errlen)
{
    char path[PATH_MAX], tmp[PATH_MAX + 16];
    int fd = -1;
    FILE *f = NULL;

    if (session_path(path, sizeof path) != 0) {
        snprintf(err, errlen, "no session file: set $PARLEY_SESSION or $HOME");
        return -1;
    }
    if (make_parents(path) != 0) {
        snprintf(err, errlen, "%s: cannot create its directory: %s", path, strerror(errno));
        return -1;
    }
    snprintf(tmp, sizeof tmp, "%s.XXXXXX", path);
    fd = mkstemp(tmp);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
        return -1;
    }
    fchmod(fd, 0600);
    f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        goto fail;
    }
    if (fprintf(f, "%s\n%s\n", token, user) < 0 || fflush(f) != 0 || fsync(fileno(f)) != 0)
        goto fail;
    if (fclose(f) != 0) {
        f = NULL;
        goto fail;
    }
    f = NULL;
    if (rename(tmp, path) != 0)
        goto fail;
    return 0;

fail:
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    if (f)
        fclose(f);
    unlink(tmp);
    return -1;
}

/* Load the session into the client. Returns 0, or an exit code. */
static int session_load(const cli *k, char *user, size_t userlen)
{
    char path[PATH_MAX], buf[SESSION_MAX];
    FILE *f;
    size_t n;
    char *nl;

    if (session_path(path, sizeof path) != 0)
        return fail_with(k, PL_ERR_NOT_LOGGED_IN, "not logged in (no session file: set $PARLEY_SESSION or $HOME)");
    f = fopen(path, "r");
    if (!f) {
        char msg[PATH_MAX + 64];
        if (errno == ENOENT)
            snprintf(msg, sizeof msg, "not logged in: run 'parley login USER' first");
        else
            snprintf(msg, sizeof msg, "%s: %s", path, strerror(errno));
        return fail_with(k, PL_ERR_NOT_LOGGED_IN, msg);
    }
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    nl = strchr(buf, '\n');
    if (!nl || nl == buf || parley_set_token(k->c, (*nl = '\0', buf)) != PL_OK) {
        sodium_memzero(buf, sizeof buf);
        return fail_with(k, PL_ERR_NOT_LOGGED_IN, "the session file is damaged: log in again");
    }
    if (user && userlen) {
        char *u = nl + 1, *e = strchr(u, '\n');
        if (e)
            *e = '\0';
        snprintf(user, userlen, "%s", u);
    }
    sodium_memzero(buf, sizeof buf);
    return 0;
}

static void session_remove(void)
{
    char path[PATH_MAX];

    if (session_path(path, sizeof path) == 0)
        unlink(path);
}

/* ------------------------------------------------------------------ */
/* Commands                                                            */
/* ------------------------------------------------------------------ */

static int cmd_register(cli *k, args *a)
{
    char pw[PL_PASSWORD_MAX + 2];
    int rc;

    if (a->npos != 1)
        return usage_error("register", "register takes one USER");
    if (!valid_username(a->pos[0]))
        return refuse_local(k, PL_ERR_USERNAME, a->pos[0]);
    rc = get_password(k, a, 1, pw, sizeof pw);
    if (rc == 0 && (strlen(pw) < PL_PASSWORD_MIN || strlen(pw) > PL_PASSWORD_MAX))
        rc = refuse_local(k, PL_ERR_PASSWORD, NULL);
    if (rc == 0) {
        int err = parley_register(k->c, a->pos[0], pw);
        rc = err ? fail_call(k, err) : 0;
    }
    sodium_memzero(pw, sizeof pw);
    if (rc)
        return rc;
    if (k->json) {
        cJSON *o = cJSON_CreateObject();
        if (o)
            cJSON_AddStringToObject(o, "user", a->pos[0]);
        return json_print(o, 0);
    }
    printf("registered %s\n", a->pos[0]);
    return 0;
}

static int cmd_login(cli *k, args *a)
{
    char pw[PL_PASSWORD_MAX + 2], err[PATH_MAX + 128];
    uint64_t unread = 0;
    int rc, e;

    if (a->npos != 1)
        return usage_error("login", "login takes one USER");
    rc = get_password(k, a, 0, pw, sizeof pw);
    if (rc) {
        sodium_memzero(pw, sizeof pw);
        return rc;
    }
    e = parley_login(k->c, a->pos[0], pw, &unread);
    sodium_memzero(pw, sizeof pw);
    if (e)
        return fail_call(k, e);
    if (session_save(parley_token(k->c), a->pos[0], err, sizeof err) != 0)
        return fail_with(k, PL_ERR_IO, err);
    if (k->json) {
        cJSON *o = cJSON_CreateObject();
        if (o) {
            cJSON_AddStringToObject(o, "user", a->pos[0]);
            cJSON_AddNumberToObject(o, "unread", (double)unread);
        }
        return json_print(o, 0);
    }
    printf("logged in as %s: %llu unread message%s\n", a->pos[0],
           (unsigned long long)unread, unread == 1 ? "" : "s");
    return 0;
}

static int cmd_logout(cli *k, args *a)
{
    int rc, e;

    if (a->npos)
        return usage_error("logout", "logout takes no arguments");
    rc = session_load(k, NULL, 0);
    if (rc)
        return rc;
    e = parley_logout(k->c);
    /* A token the server no longer knows is as logged out as it gets. */
    if (e == PL_OK || e == PL_ERR_NOT_LOGGED_IN)
        session_remove();
    if (e && e != PL_ERR_NOT_LOGGED_IN)
        return fail_call(k, e);
    if (k->json)
        return json_ok();
    printf("logged out\n");
    return 0;
}

static int cmd_users(cli *k, args *a)
{
    parley_result *r = NULL;
    const char *pattern = a->npos ? a->pos[0] : "";
    int e;

    if (a->npos > 1)
        return usage_error("users", "users takes at most one PATTERN");
    if (!valid_pattern(pattern))
        return refuse_local(k, PL_ERR_PATTERN, NULL);
    if (a->limit > PL_PAGE_MAX)
        return page_limit(k, "--limit");
    if ((e = session_load(k, NULL, 0)) != 0)
        return e;
    e = parley_list_users(k->c, pattern, a->offset, a->limit, &r);
    if (e)
        return fail_call(k, e);
    if (k->json) {
        cJSON *o = cJSON_CreateObject(), *arr = cJSON_CreateArray();
        if (o && arr) {
            /* Result strings are NUL-terminated (parley_result_copy). */
            for (uint32_t i = 0; i < r->resp.n_users; i++)
                cJSON_AddItemToArray(arr, cJSON_CreateString(r->resp.users[i].ptr));
            cJSON_AddItemToObject(o, "users", arr);
            arr = NULL;
            cJSON_AddBoolToObject(o, "more", r->resp.more != 0);
        }
        cJSON_Delete(arr);
        e = json_print(o, 0);
    } else {
        for (uint32_t i = 0; i < r->resp.n_users; i++) {
            put_str(stdout, r->resp.users[i]);
            fputc('\n', stdout);
        }
        if (r->resp.n_users == 0)
            printf("(no users)\n");
        if (r->resp.more)
            printf("(more: --offset %llu)\n",
                   (unsigned long long)(a->offset + r->resp.n_users));
    }
    parley_result_free(r);
    return e;
}

static int cmd_send(cli *k, args *a)
{
    size_t len = 0;
    char *body;
    uint64_t id = 0, t = 0;
    int e;

    if (a->npos < 2)
        return usage_error("send", "send takes USER and a MESSAGE");
    if (!valid_username(a->pos[0]))
        return refuse_local(k, PL_ERR_NO_SUCH_USER, a->pos[0]);
    for (int i = 1; i < a->npos; i++)
        len += strlen(a->pos[i]) + 1;
    if (len - 1 > PL_BODY_MAX)
        return refuse_local(k, PL_ERR_BODY, NULL);
    body = malloc(len);
    if (!body)
        return fail_with(k, PL_ERR_NOMEM, pl_strerror(PL_ERR_NOMEM));
    body[0] = '\0';
    size_t at = 0;
    for (int i = 1; i < a->npos; i++) {
        size_t n = strlen(a->pos[i]);
        if (i > 1)
            body[at++] = ' ';
        memcpy(body + at, a->pos[i], n + 1);
        at += n;
    }
    if (body[0] == '\0' || !valid_utf8((const unsigned char *)body, strlen(body))) {
        free(body);
        return refuse_local(k, PL_ERR_BODY, NULL);
    }
    if ((e = session_load(k, NULL, 0)) != 0) {
        free(body);
        return e;
    }
    e = parley_send(k->c, a->pos[0], body, &id, &t);
    free(body);
    if (e)
        return fail_call(k, e);
    if (k->json) {
        cJSON *o = cJSON_CreateObject();
        if (o) {
            cJSON_AddNumberToObject(o, "id", (double)id);
            cJSON_AddNumberToObject(o, "time", (double)t);
        }
        return json_print(o, 0);
    }
    printf("sent #%llu\n", (unsigned long long)id);
    return 0;
}

static int cmd_unread(cli *k, args *a)
{
    uint64_t unread = 0, rd = 0;
    int e;

    if (a->npos)
        return usage_error("unread", "unread takes no arguments");
    if ((e = session_load(k, NULL, 0)) != 0)
        return e;
    e = parley_counts(k->c, &unread, &rd);
    if (e)
        return fail_call(k, e);
    if (k->json) {
        cJSON *o = cJSON_CreateObject();
        if (o) {
            cJSON_AddNumberToObject(o, "unread", (double)unread);
            cJSON_AddNumberToObject(o, "read", (double)rd);
        }
        return json_print(o, 0);
    }
    printf("%llu unread, %llu read\n", (unsigned long long)unread, (unsigned long long)rd);
    return 0;
}

/* Print a message list. more_hint: the text after "(more: " or NULL. */
static int print_messages(const cli *k, const parley_result *r, const char *empty,
                          const char *more_hint)
{
    if (k->json) {
        cJSON *o = cJSON_CreateObject(), *arr = cJSON_CreateArray();
        if (o && arr) {
            for (uint32_t i = 0; i < r->resp.n_msgs; i++)
                cJSON_AddItemToArray(arr, json_message(&r->resp.msgs[i]));
            cJSON_AddItemToObject(o, "messages", arr);
            arr = NULL;
            cJSON_AddBoolToObject(o, "more", r->resp.more != 0);
        }
        cJSON_Delete(arr);
        return json_print(o, 0);
    }
    for (uint32_t i = 0; i < r->resp.n_msgs; i++)
        print_message_line(&r->resp.msgs[i]);
    if (r->resp.n_msgs == 0)
        printf("%s\n", empty);
    if (r->resp.more && more_hint)
        printf("(more: %s)\n", more_hint);
    return 0;
}

/* read -n N: one page; when more remain, say how many (one counts call). */
static int read_some(cli *k, uint64_t n)
{
    parley_result *r = NULL;
    uint64_t left = 0;
    int e = parley_read(k->c, n, &r);

    if (e)
        return fail_call(k, e);
    /* The read is done; a failed count only loses the number. */
    int have_left = r->resp.more && parley_counts(k->c, &left, NULL) == PL_OK;
    if (k->json) {
        cJSON *o = cJSON_CreateObject(), *arr = cJSON_CreateArray();
        if (o && arr) {
            for (uint32_t i = 0; i < r->resp.n_msgs; i++)
                cJSON_AddItemToArray(arr, json_message(&r->resp.msgs[i]));
            cJSON_AddItemToObject(o, "messages", arr);
            arr = NULL;
            cJSON_AddBoolToObject(o, "more", r->resp.more != 0);
            if (have_left)
                cJSON_AddNumberToObject(o, "unread_left", (double)left);
        }
        cJSON_Delete(arr);
        parley_result_free(r);
        return json_print(o, 0);
    }
    for (uint32_t i = 0; i < r->resp.n_msgs; i++)
        print_message_line(&r->resp.msgs[i]);
    if (r->resp.n_msgs == 0)
        printf("(no unread messages)\n");
    if (r->resp.more && have_left)
        printf("(more: %llu unread left; run 'parley read' again)\n", (unsigned long long)left);
    else if (r->resp.more)
        printf("(more: unread messages are left; run 'parley read' again)\n");
    parley_result_free(r);
    return 0;
}

/* read with no -n: every unread message. One read takes at most a page
 * (PL_PAGE_MAX messages, or PL_REPLY_BUDGET bytes), so this reads page
 * after page until the server says none is left; each page is its own
 * replicated read op, printed (and so marked read) as it comes. Messages
 * that arrive meanwhile are read too. If a page fails, what was read
 * before it has been printed: with --json the one document then carries
 * those messages, "more": true and the error. */
static int read_all(cli *k)
{
    cJSON *doc = k->json ? cJSON_CreateObject() : NULL, *arr = k->json ? cJSON_CreateArray() : NULL;
    uint64_t total = 0, pages = 0;
    int more = 1, e = 0;

    if (k->json && (!doc || !arr)) {
        cJSON_Delete(doc);
        cJSON_Delete(arr);
        fprintf(stderr, "parley: out of memory\n");
        return EXIT_REFUSED;
    }
    while (more) {
        parley_result *r = NULL;
        if ((e = parley_read(k->c, 0, &r)) != PL_OK)
            break;
        pages++;
        for (uint32_t i = 0; i < r->resp.n_msgs; i++) {
            if (k->json)
                cJSON_AddItemToArray(arr, json_message(&r->resp.msgs[i]));
            else
                print_message_line(&r->resp.msgs[i]);
        }
        if (!k->json)
            fflush(stdout);
        total += r->resp.n_msgs;
        /* A page that says "more" but holds nothing would loop for ever. */
        more = r->resp.more && r->resp.n_msgs > 0;
        parley_result_free(r);
    }
    if (!k->json) {
        if (e)
            return fail_call(k, e);
        if (total == 0)
            printf("(no unread messages)\n");
        else if (pages > 1)
            printf("(read %llu messages in %llu pages)\n", (unsigned long long)total,
                   (unsigned long long)pages);
        return 0;
    }
    cJSON_AddItemToObject(doc, "messages", arr);
    cJSON_AddBoolToObject(doc, "more", e != PL_OK);
    if (e) {
        const char *msg = parley_last_error(k->c);
        fprintf(stderr, "parley: reading page %llu: %s (the %llu messages before it were read "
                "and are printed)\n", (unsigned long long)pages + 1, msg,
                (unsigned long long)total);
        cJSON_AddStringToObject(doc, "error", msg);
        cJSON_AddNumberToObject(doc, "code", e);
        json_print(doc, 0);
        return parley_unreachable(e) ? EXIT_UNREACHABLE : EXIT_REFUSED;
    }
    return json_print(doc, 0);
}

static int cmd_read(cli *k, args *a)
{
    int e;

    if (a->npos)
        return usage_error("read", "read takes no arguments besides -n N");
    if (a->n > PL_PAGE_MAX)
        return page_limit(k, "-n");
    if ((e = session_load(k, NULL, 0)) != 0)
        return e;
    return a->n ? read_some(k, a->n) : read_all(k);
}

static int cmd_pages(cli *k, args *a, const char *cmd, const char *peer)
{
    parley_result *r = NULL;
    char hint[64];
    int e;

    if (a->limit > PL_PAGE_MAX)
        return page_limit(k, "--limit");
    if ((e = session_load(k, NULL, 0)) != 0)
        return e;
    if (peer)
        e = parley_conversation(k->c, peer, a->offset, a->limit, &r);
    else
        e = parley_history(k->c, a->offset, a->limit, &r);
    if (e)
        return fail_call(k, e);
    snprintf(hint, sizeof hint, "--offset %llu",
             (unsigned long long)(a->offset + r->resp.n_msgs));
    e = print_messages(k, r, "(no messages)", hint);
    parley_result_free(r);
    (void)cmd;
    return e;
}

static int cmd_history(cli *k, args *a)
{
    if (a->npos)
        return usage_error("history", "history takes no arguments besides --offset/--limit");
    return cmd_pages(k, a, "history", NULL);
}

static int cmd_conversation(cli *k, args *a)
{
    if (a->npos != 1)
        return usage_error("conversation", "conversation takes one USER");
    if (!valid_username(a->pos[0]))
        return refuse_local(k, PL_ERR_NO_SUCH_USER, a->pos[0]);
    return cmd_pages(k, a, "conversation", a->pos[0]);
}

static int cmd_ids(cli *k, args *a, const char *cmd, int del)
{
    uint64_t *ids;
    int e;

    if (a->npos == 0)
        return usage_error(cmd, "%s takes at least one message ID", cmd);
    if ((uint32_t)a->npos > PL_IDS_MAX) {
        char buf[96];
        snprintf(buf, sizeof buf, "at most %u message IDs in one %s", PL_IDS_MAX, cmd);
        return fail_with(k, PL_ERR_TOO_MANY_IDS, buf);
    }
    ids = calloc((size_t)a->npos, sizeof *ids);
    if (!ids)
        return fail_with(k, PL_ERR_NOMEM, pl_strerror(PL_ERR_NOMEM));
    for (int i = 0; i < a->npos; i++) {
        const char *s = a->pos[i][0] == '#' ? a->pos[i] + 1 : a->pos[i];
        if (parse_u64(s, &ids[i]) != 0 || ids[i] == 0) {
            free(ids);
            return usage_error(cmd, "\"%s\" is not a message ID", a->pos[i]);
        }
    }
    if ((e = session_load(k, NULL, 0)) != 0) {
        free(ids);
        return e;
    }
    e = del ? parley_delete(k->c, ids, (uint32_t)a->npos)
            : parley_ack(k->c, ids, (uint32_t)a->npos);
    if (e) {
        free(ids);
        return fail_call(k, e);
    }
    if (k->json) {
        cJSON *o = cJSON_CreateObject(), *arr = cJSON_CreateArray();
        if (o && arr) {
            for (int i = 0; i < a->npos; i++)
                cJSON_AddItemToArray(arr, cJSON_CreateNumber((double)ids[i]));
            cJSON_AddItemToObject(o, del ? "deleted" : "acked", arr);
            arr = NULL;
        }
        cJSON_Delete(arr);
        free(ids);
        return json_print(o, 0);
    }
    printf("%s %d message%s\n", del ? "deleted" : "marked read", a->npos,
           a->npos == 1 ? "" : "s");
    free(ids);
    return 0;
}

static int cmd_ack(cli *k, args *a)
{
    return cmd_ids(k, a, "ack", 0);
}

static int cmd_delete(cli *k, args *a)
{
    return cmd_ids(k, a, "delete", 1);
}

static int cmd_delete_account(cli *k, args *a)
{
    char pw[PL_PASSWORD_MAX + 2];
    int rc, e;

    if (a->npos)
        return usage_error("delete-account", "delete-account takes no arguments");
    if ((rc = session_load(k, NULL, 0)) != 0)
        return rc;
    rc = get_password(k, a, 0, pw, sizeof pw);
    if (rc) {
        sodium_memzero(pw, sizeof pw);
        return rc;
    }
    e = parley_delete_account(k->c, pw);
    sodium_memzero(pw, sizeof pw);
    if (e)
        return fail_call(k, e);
    session_remove();
    if (k->json)
        return json_ok();
    printf("account deleted\n");
    return 0;
}

/* ---- listen ---- */

typedef struct listener {
    cli *k;
    uint64_t *ids;       /* printed, not yet acked */
    size_t n, cap;
    int in_flight;       /* one ack at a time: the rest batch up behind it */
    int warned;
} listener;

static void ack_flush(listener *l);

static void ack_done(void *ud, int err, const pl_response *resp)
{
    listener *l = ud;

    (void)resp;
    l->in_flight = 0;
    /* STALE_REQUEST: an ack resent after a reconnect that the server had
     * already applied under a later request number. Nothing is lost. */
    if (err && err != PL_ERR_STALE_REQUEST && !l->warned) {
        fprintf(stderr, "parley: marking messages read failed: %s\n",
                parley_last_error(l->k->c));
        l->warned = 1;
    }
    if (l->n)
        ack_flush(l);
}

static void ack_flush(listener *l)
{
    pl_request q = { .method = PL_M_ACK };
    size_t take = l->n > PL_IDS_MAX ? PL_IDS_MAX : l->n;

    if (l->in_flight || take == 0)
        return;
    q.ids = l->ids;
    q.n_ids = (uint32_t)take;
    if (parley_call_async(l->k->c, &q, ack_done, l) != PL_OK)
        return;
    l->in_flight = 1;
    memmove(l->ids, l->ids + take, (l->n - take) * sizeof *l->ids);
    l->n -= take;
}

static void on_push(void *ud, const pl_message *m)
{
    listener *l = ud;

    if (l->k->json)
        json_print(json_message(m), 1);
    else {
        print_message_line(m);
        fflush(stdout);
    }
    /* Ack only what reached stdout (DESIGN.md: a push that never reached a
     * screen stays unread). */
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        uint64_t *ids = realloc(l->ids, cap * sizeof *ids);
        if (!ids)
            return;
        l->ids = ids;
        l->cap = cap;
    }
    l->ids[l->n++] = m->id;
    ack_flush(l);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    parley_stop(arg);
}

static int cmd_listen(cli *k, args *a)
{
    /* Static: an ack still pending when the client is freed (a second
     * Ctrl-C while draining) reports to it after this function returns. */
    static listener l;
    struct event *sigint = NULL, *sigterm = NULL;
    struct event_base *base = parley_event_base(k->c);
    int e;

    if (a->npos)
        return usage_error("listen", "listen takes no arguments");
    if ((e = session_load(k, NULL, 0)) != 0)
        return e;
    memset(&l, 0, sizeof l);
    l.k = k;
    sigint = evsignal_new(base, SIGINT, on_signal, k->c);
    sigterm = evsignal_new(base, SIGTERM, on_signal, k->c);
    if (!sigint || !sigterm || evsignal_add(sigint, NULL) || evsignal_add(sigterm, NULL)) {
        e = fail_with(k, PL_ERR_NOMEM, "cannot install signal handlers");
        goto out;
    }
    if (!k->json && isatty(STDOUT_FILENO))
        fprintf(stderr, "listening; Ctrl-C to stop\n");
    parley_on_message(k->c, on_push, &l);
    e = parley_listen(k->c, 0, 0);
    /* Stop printing; let the acks for what was printed finish. */
    parley_on_message(k->c, NULL, NULL);
    ack_flush(&l);
    parley_wait(k->c);
    e = e ? fail_call(k, e) : 0;
out:
    if (sigint)
        event_free(sigint);
    if (sigterm)
        event_free(sigterm);
    free(l.ids);
    l.ids = NULL;
    l.n = l.cap = 0;
    return e;
}

static int cmd_status(cli *k, args *a)
{
    parley_result *r = NULL;
    int e;

    if (a->npos)
        return usage_error("status", "status takes no arguments");
    e = parley_status(k->c, &r);
    if (e)
        return fail_call(k, e);
    if (k->json) {
        cJSON *o = cJSON_CreateObject(), *arr = cJSON_CreateArray();
        if (o && arr) {
            for (uint32_t i = 0; i < r->resp.n_servers; i++) {
                const pl_server_status *s = &r->resp.servers[i];
                cJSON *row = cJSON_CreateObject();
                if (!row)
                    continue;
                cJSON_AddNumberToObject(row, "id", s->id);
                json_add_str(row, "address", s->address);
                cJSON_AddBoolToObject(row, "reachable", s->reachable != 0);
                json_add_str(row, "role", s->role);
                cJSON_AddNumberToObject(row, "view", (double)s->view);
                cJSON_AddNumberToObject(row, "op", (double)s->op);
                cJSON_AddNumberToObject(row, "commit", (double)s->commit);
                cJSON_AddNumberToObject(row, "applied", (double)s->applied);
                json_add_str(row, "store", s->store);
                json_add_str(row, "transport", s->transport);
                json_add_str(row, "digest", s->digest);
                cJSON_AddItemToArray(arr, row);
            }
            cJSON_AddItemToObject(o, "servers", arr);
            arr = NULL;
        }
        cJSON_Delete(arr);
        e = json_print(o, 0);
    } else {
        /* Lag: how far a server's applied state is behind the highest commit
         * number any server reports (the primary's, when it answered). */
        uint64_t top = 0;
        for (uint32_t i = 0; i < r->resp.n_servers; i++)
            if (r->resp.servers[i].reachable && r->resp.servers[i].commit > top)
                top = r->resp.servers[i].commit;
        printf("%-3s %-22s %-12s %6s %10s %10s %10s %6s  %-16s %s\n", "ID", "ADDRESS", "ROLE",
               "VIEW", "OP", "COMMIT", "APPLIED", "LAG", "STORE/TRANSPORT", "DIGEST");
        for (uint32_t i = 0; i < r->resp.n_servers; i++) {
            const pl_server_status *s = &r->resp.servers[i];
            printf("%-3u %-22.*s ", (unsigned)s->id, (int)s->address.len, s->address.ptr);
            if (!s->reachable) {
                printf("%-12s\n", "unreachable");
                continue;
            }
            char st[64];
            snprintf(st, sizeof st, "%.*s/%.*s", (int)s->store.len, s->store.ptr,
                     (int)s->transport.len, s->transport.ptr);
            /* After a membership change the view carries the epoch in its
             * high bits (docs/replication.md): show it as EPOCH.VIEW. */
            char view[32];
            if (s->view >> 40)
                snprintf(view, sizeof view, "%llu.%llu", (unsigned long long)(s->view >> 40),
                         (unsigned long long)(s->view & ((1ull << 40) - 1)));
            else
                snprintf(view, sizeof view, "%llu", (unsigned long long)s->view);
            printf("%-12.*s %6s %10llu %10llu %10llu %6llu  %-16s %.*s\n",
                   (int)s->role.len, s->role.ptr, view,
                   (unsigned long long)s->op, (unsigned long long)s->commit,
                   (unsigned long long)s->applied,
                   (unsigned long long)(top > s->applied ? top - s->applied : 0), st,
                   (int)(s->digest.len < 12 ? s->digest.len : 12), s->digest.ptr);
        }
    }
    parley_result_free(r);
    return e;
}

/* ------------------------------------------------------------------ */
/* main                                                                */
/* ------------------------------------------------------------------ */

typedef struct command {
    const char *name;
    unsigned opts;
    int needs_client;
    int (*run)(cli *k, args *a);
} command;

static const command COMMANDS[] = {
    { "register", OPT_PASSWORD_STDIN, 1, cmd_register },
    { "login", OPT_PASSWORD_STDIN, 1, cmd_login },
    { "logout", 0, 1, cmd_logout },
    { "users", OPT_PAGE, 1, cmd_users },
    { "send", OPT_REST, 1, cmd_send },
    { "unread", 0, 1, cmd_unread },
    { "read", OPT_N, 1, cmd_read },
    { "history", OPT_PAGE, 1, cmd_history },
    { "conversation", OPT_PAGE, 1, cmd_conversation },
    { "ack", 0, 1, cmd_ack },
    { "delete", 0, 1, cmd_delete },
    { "delete-account", OPT_PASSWORD_STDIN, 1, cmd_delete_account },
    { "listen", 0, 1, cmd_listen },
    { "status", 0, 1, cmd_status },
};

int main(int argc, char **argv)
{
    cli k;
    const command *cmd = NULL;
    parley_options o;
    args a;
    char err[4096];
    int i, rc;

    memset(&k, 0, sizeof k);
    memset(&a, 0, sizeof a);
    /* A server closing the connection must be an error return, not death. */
    signal(SIGPIPE, SIG_IGN);

    for (i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (s[0] != '-')
            break;
        if (strcmp(s, "--") == 0) {
            i++;
            break;
        }
        if (strcmp(s, "-h") == 0 || strcmp(s, "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(s, "--version") == 0) {
            printf("parley %s\n", PARLEY_VERSION);
            return 0;
        } else if (strcmp(s, "--json") == 0) {
            k.json = 1;
        } else if (strcmp(s, "-c") == 0 || strcmp(s, "--config") == 0) {
            if (++i >= argc)
                return usage_error(NULL, "%s needs a CONFIG file", s);
            k.config = argv[i];
        } else if (strncmp(s, "--config=", 9) == 0) {
            k.config = s + 9;
        } else if (strcmp(s, "--server") == 0) {
            if (++i >= argc)
                return usage_error(NULL, "--server needs HOST:PORT");
            k.server = argv[i];
        } else if (strncmp(s, "--server=", 9) == 0) {
            k.server = s + 9;
        } else {
            return usage_error(NULL, "unknown option %s", s);
        }
    }
    if (i >= argc) {
        /* No command: the full-screen terminal UI (client/tui.c). */
        memset(&o, 0, sizeof o);
        o.config_path = k.config;
        o.server = k.server;
        return parley_tui_run(&o);
    }
    /* Operator commands read the admin HTTP endpoint, not the chat wire
     * format, so they need no libparley client (client/admin.c). */
    if (strcmp(argv[i], "admin") == 0)
        return parley_admin_main(k.config, k.json, argc - i - 1, argv + i + 1);
    for (size_t c = 0; c < sizeof COMMANDS / sizeof COMMANDS[0]; c++)
        if (strcmp(COMMANDS[c].name, argv[i]) == 0)
            cmd = &COMMANDS[c];
    if (!cmd)
        return usage_error(NULL, "unknown command \"%s\"", argv[i]);

    rc = parse_args(cmd->name, argc - i - 1, argv + i + 1, cmd->opts, &a);
    if (rc)
        goto out;
    if (a.help) {
        const cmd_help *h = help_for(cmd->name);
        printf("usage: parley [GLOBAL OPTIONS] %s\n\n%s", h->synopsis, h->text);
        rc = 0;
        goto out;
    }
    memset(&o, 0, sizeof o);
    o.config_path = k.config;
    o.server = k.server;
    k.c = parley_new(&o, err, sizeof err);
    if (!k.c) {
        /* A config file with several mistakes: one line each. */
        for (const char *l = err; *l;) {
            size_t n = strcspn(l, "\n");
            fprintf(stderr, "parley: %.*s\n", (int)n, l);
            l += n + (l[n] == '\n');
        }
        rc = EXIT_USAGE;
        goto out;
    }
    rc = cmd->run(&k, &a);
out:
    parley_free(k.c);
    free(a.pos);
    fflush(stdout);
    return rc;
}
