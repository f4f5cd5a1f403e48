/*
 * client/tui.h — the full-screen terminal UI of `parley` (ncursesw), opened
 * when the CLI gets no command.
 *
 * It runs entirely on libparley's event_base: the terminal is one more read
 * event on that loop and every request is asynchronous, so a slow or
 * unreachable server never freezes the screen.
 */
#ifndef PARLEY_TUI_H
#define PARLEY_TUI_H

#include "parley.h"

/* Run the UI until the user quits. opts is read as parley_new reads it.
 * Returns a process exit code: 0 after a normal quit, 2 when the client
 * cannot be created or stdin/stdout are not a terminal, 1 when the terminal
 * cannot be set up. */
int parley_tui_run(const parley_options *opts);

#endif
