/*
 * failinstall.c - a deliberately broken plugin for qshell's error tests: its
 * version is fine but qemu_plugin_install returns -1, as a plugin does on a
 * bad argument. QEMU 7.2 reports "qemu_plugin_install returned error code
 * -1" and exits 1.
 */
#include <stdio.h>

#include "qshell-plugin.h"

QSHELL_PLUGIN_VERSION_DEFINE

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id,
                                           const qemu_info_t *info,
                                           int argc, char **argv)
{
    (void)id;
    (void)info;
    (void)argc;
    (void)argv;
    fprintf(stderr, "failinstall: refusing to install (test plugin)\n");
    return -1;
}
