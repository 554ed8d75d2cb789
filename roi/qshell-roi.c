/*
 * qshell-roi.c - the guest helper: `qshell-roi begin ID` and `qshell-roi
 * end ID` execute the ROI marker of qshell-roi.h for an id given at run
 * time, so a shell command can mark a workload:
 *
 *   qshell-roi begin 3; ./work; qshell-roi end 3
 *
 * The marker is an instruction whose bytes hold the id, so for a run-time id
 * it is written into a fresh page (mapped writable, then made executable:
 * never both) and called.  Exit status 0, or 2 with a message for bad usage.
 *
 * Freestanding (no libc, static, a few hundred bytes of code): the helper
 * adds as few instructions as possible to the region it marks, and needs
 * nothing from the guest's root filesystem.  x86-64 Linux only.
 */
#include "qshell-roi.h"

#define SYS_write 1
#define SYS_mmap 9
#define SYS_mprotect 10
#define SYS_exit_group 231
#define PROT_READ 1
#define PROT_WRITE 2
#define PROT_EXEC 4
#define MAP_PRIVATE 2
#define MAP_ANONYMOUS 0x20

static long sys3(long n, long a, long b, long c)
{
    long r;

    __asm__ __volatile__("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c)
                         : "rcx", "r11", "memory");
    return r;
}

static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
    long r;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;

    __asm__ __volatile__("syscall" : "=a"(r)
                         : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                         : "rcx", "r11", "memory");
    return r;
}

__attribute__((noreturn)) static void quit(int status)
{
    sys3(SYS_exit_group, status, 0, 0);
    __builtin_unreachable();
}

static unsigned long len_of(const char *s)
{
    unsigned long n = 0;

    while (s[n] != '\0') {
        n++;
    }
    return n;
}

static void say(const char *s)
{
    sys3(SYS_write, 2, (long)s, (long)len_of(s));
}

static int same(const char *a, const char *b)
{
    while (*a != '\0' && *a == *b) {
        a++;
        b++;
    }
    return *a == *b;
}

/* A decimal id 0..65535, or -1. */
static long parse_id(const char *s)
{
    long v = 0;

    if (*s == '\0') {
        return -1;
    }
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9') {
            return -1;
        }
        v = v * 10 + (*s - '0');
        if (v > (long)QSHELL_ROI_MAX_ID) {
            return -1;
        }
    }
    return v;
}

static const char usage[] =
    "usage: qshell-roi begin|end ID    (ID: 0..65535)\n"
    "marks the start or the end of region of interest ID for qshell's plugins\n";

/* Called from _start with the initial stack pointer. */
__attribute__((used)) static void roi_main(long *sp)
{
    long argc = sp[0];
    char **argv = (char **)(sp + 1);
    unsigned int op;
    long id;
    unsigned char *page;
    unsigned int disp;

    if (argc != 3) {
        say(usage);
        quit(2);
    }
    if (same(argv[1], "begin")) {
        op = QSHELL_ROI_OP_BEGIN;
    } else if (same(argv[1], "end")) {
        op = QSHELL_ROI_OP_END;
    } else {
        say("qshell-roi: the first argument is begin or end\n");
        say(usage);
        quit(2);
    }
    id = parse_id(argv[2]);
    if (id < 0) {
        say("qshell-roi: the id is a whole number from 0 to 65535\n");
        quit(2);
    }
    page = (unsigned char *)sys6(SYS_mmap, 0, 4096, PROT_READ | PROT_WRITE,
                                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if ((unsigned long)page > -4096UL) {
        say("qshell-roi: mmap failed\n");
        quit(1);
    }
    disp = QSHELL_ROI_DISP(op, (unsigned int)id);
    page[0] = 0x0f; /* nopl disp32(%rax,%rax,1) */
    page[1] = 0x1f;
    page[2] = 0x84;
    page[3] = 0x00;
    page[4] = (unsigned char)disp;
    page[5] = (unsigned char)(disp >> 8);
    page[6] = (unsigned char)(disp >> 16);
    page[7] = (unsigned char)(disp >> 24);
    page[8] = 0xc3; /* ret */
    if (sys3(SYS_mprotect, (long)page, 4096, PROT_READ | PROT_EXEC) != 0) {
        say("qshell-roi: mprotect failed\n");
        quit(1);
    }
    ((void (*)(void))page)();
    quit(0);
}

__asm__(".globl _start\n"
        "_start:\n"
        "    mov %rsp, %rdi\n"
        "    and $-16, %rsp\n"
        "    call roi_main\n"
        "    hlt\n");
