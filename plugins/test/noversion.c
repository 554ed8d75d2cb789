/*
 * noversion.c - a deliberately broken plugin for qshell's error tests: it
 * exports qemu_plugin_install but no qemu_plugin_version symbol. QEMU 7.2
 * refuses it ("plugin does not declare API version 'qemu_plugin_version'")
 * and exits 1.
 */
#include "qshell-plugin.h"

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
