/*
 * badversion.c - a deliberately broken plugin for qshell's error tests: it
 * declares plugin API version 99, newer than any QEMU supports. QEMU 7.2
 * refuses it before calling qemu_plugin_install ("plugin requires API
 * version 99, but this QEMU supports only up to version 1") and exits 1.
 */
#include "qshell-plugin.h"

QEMU_PLUGIN_EXPORT int qemu_plugin_version = 99;

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id,
                                           const qemu_info_t *info,
                                           int argc, char **argv)
{
    (void)id;
    (void)info;
    (void)argc;
    (void)argv;
    return 0;
}
