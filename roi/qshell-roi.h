/*
 * qshell-roi.h - mark a region of interest (ROI) in a workload, for
 * qshell's insn and hotblocks TCG plugins.
 *
 *   #include "qshell-roi.h"
 *   QSHELL_ROI_BEGIN(3);
 *   work();
 *   QSHELL_ROI_END(3);
 *
 * A marker is one 8-byte x86 NOP, `nopl DISP(%rax,%rax,1)` (0f 1f 84 00
 * followed by a 32-bit displacement), whose displacement carries a magic
 * number, the operation and the ROI id:
 *
 *   DISP = 0x51500000 | op << 16 | id      op: 1 begin, 2 end; id: 0..65535
 *
 * Why a NOP: it does nothing, on real hardware, under KVM (no VM exit) and
 * under QEMU without the plugin, and it touches no register, flag or memory
 * (the "address" of a NOP is never computed), so a marked binary runs
 * anywhere unchanged.  Why this one: compilers and assemblers pad with long
 * NOPs whose displacement is 0; a displacement of 0x5151xxxx or 0x5152xxxx
 * does not occur by accident.  The plugins find markers when QEMU translates
 * code, so unmarked code costs nothing at run time.  (A reserved CPUID leaf
 * would need the plugin to read EAX, which QEMU 7.2's plugin API cannot, and
 * CPUID is a VM exit under KVM.)
 *
 * The id must be a constant (it is part of the instruction); for an id known
 * only at run time use the `qshell-roi begin|end ID` helper program.
 * x86-64 and i386 only.
 */
#ifndef QSHELL_ROI_H
#define QSHELL_ROI_H

#if !defined(__x86_64__) && !defined(__i386__)
#error "qshell-roi.h: ROI markers are x86 instructions (x86-64 or i386)"
#endif

#define QSHELL_ROI_MAGIC 0x51500000u
#define QSHELL_ROI_OP_BEGIN 1u
#define QSHELL_ROI_OP_END 2u
#define QSHELL_ROI_MAX_ID 65535u

/* The displacement of the marker for op and id. */
#define QSHELL_ROI_DISP(op, id) \
    (QSHELL_ROI_MAGIC | ((op) << 16) | ((unsigned)(id) & 0xffffu))

/*
 * One marker. The "memory" clobber keeps the compiler from moving loads and
 * stores of the workload across it.  A compile error "size of array is
 * negative" means the id is out of range (0..65535).
 */
#define QSHELL_ROI_MARK_(op, id)                                        \
    do {                                                                \
        (void)sizeof(char[((id) >= 0 && (id) <= 65535) ? 1 : -1]);      \
        __asm__ __volatile__(".byte 0x0f, 0x1f, 0x84, 0x00\n\t.long %c0" \
                             : : "i"(QSHELL_ROI_DISP(op, id)) : "memory"); \
    } while (0)

#define QSHELL_ROI_BEGIN(id) QSHELL_ROI_MARK_(QSHELL_ROI_OP_BEGIN, id)
#define QSHELL_ROI_END(id) QSHELL_ROI_MARK_(QSHELL_ROI_OP_END, id)

#endif
