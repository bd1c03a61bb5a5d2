# PVH entry: QEMU loads this ELF and jumps to pvh_start32 in 32-bit
# protected mode, paging off, flat segments, %ebx = hvm_start_info, no stack.
# We zero .bss, identity-map 0..4 GiB with 2 MiB pages, enable SSE and long
# mode, and call rust_main(start_info) on our own stack.

    .section .note.Xen, "a", @note
    .p2align 2
    .long 4                     # name size
    .long 4                     # desc size
    .long 18                    # XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .long pvh_start32

    .section .text.boot, "ax", @progbits
    .code32
    .globl pvh_start32
pvh_start32:
    cli
    cld
    movl %ebx, %esi             # keep the start-info pointer

    movl $__bss_start, %edi     # zero .bss (page tables, stack, statics)
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb

    movl $boot_stack_top, %esp

    movl $boot_pdpt, %eax       # PML4[0] -> PDPT
    orl $0x3, %eax
    movl %eax, boot_pml4

    xorl %ecx, %ecx             # PDPT[0..4] -> the four page directories
1:  movl %ecx, %eax
    shll $12, %eax
    addl $boot_pd, %eax
    orl $0x3, %eax
    movl %eax, boot_pdpt(,%ecx,8)
    incl %ecx
    cmpl $4, %ecx
    jb 1b

    xorl %ecx, %ecx             # PD entry i maps 2 MiB at i << 21 (P|RW|PS)
2:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, boot_pd(,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jb 2b

    movl %cr4, %eax             # PAE | OSFXSR | OSXMMEXCPT
    orl $0x620, %eax
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx      # EFER.LME
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax             # clear EM and TS; set PG, MP, PE
    andl $0xfffffff3, %eax
    orl $0x80000003, %eax
    movl %eax, %cr0

    lgdt boot_gdt_ptr
    ljmp $0x08, $long_mode

    .code64
long_mode:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movl $boot_stack_top, %esp  # zero-extends into %rsp
    andq $-16, %rsp
    movl %esi, %edi             # rust_main(start_info)
    call rust_main
3:  hlt
    jmp 3b

    .section .data.boot, "aw", @progbits
    .p2align 3
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    # 0x08: 64-bit code
    .quad 0x00cf92000000ffff    # 0x10: data
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .bss.boot, "aw", @nobits
    .p2align 12
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4 * 4096
boot_stack:
    .skip 256 * 1024
boot_stack_top:
