// Does a host write to a present guest PTE take effect? And which flush makes it?
#define _GNU_SOURCE
#include <err.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
#define MEMSZ (64ul<<20)
int kvm,vm,vcpu; struct kvm_run*run; uint8_t*mem;
// identity 2MiB for low 4MiB (supervisor 0..2M, user 2..4M) + PT at 0x5000 covering VA 0x400000..0x600000 (4K pages)
// user code at 0x200000: loop { mov (0x400000),%eax ; out %al,$0x80 }
// kernel stubs at 0x8000: flush_cr3: mov %cr3,%rax; mov %rax,%cr3; out %al,$0x81 ; invlpg: invlpg (%rbx); out %al,$0x81
static void setregion(int slot,uint32_t flags){ struct kvm_userspace_memory_region r={.slot=slot,.flags=flags,.guest_phys_addr=0,.memory_size=MEMSZ,.userspace_addr=(uint64_t)mem}; if(ioctl(vm,KVM_SET_USER_MEMORY_REGION,&r)<0) err(1,"region"); }
static void delregion(){ struct kvm_userspace_memory_region r={.slot=0,.memory_size=0,.guest_phys_addr=0,.userspace_addr=(uint64_t)mem}; if(ioctl(vm,KVM_SET_USER_MEMORY_REGION,&r)<0) err(1,"delregion"); }
static const struct kvm_segment UCS={.base=0,.limit=0xffffffff,.selector=0x23,.present=1,.type=11,.dpl=3,.s=1,.l=1,.g=1};
static const struct kvm_segment USS={.base=0,.limit=0xffffffff,.selector=0x1b,.present=1,.type=3,.dpl=3,.s=1,.db=1,.g=1};
static const struct kvm_segment KCS={.base=0,.limit=0xffffffff,.selector=0x08,.present=1,.type=11,.dpl=0,.s=1,.l=1,.g=1};
static const struct kvm_segment KSS={.base=0,.limit=0xffffffff,.selector=0x10,.present=1,.type=3,.dpl=0,.s=1,.db=1,.g=1};
uint64_t *pte;
int runto(int port){ if(ioctl(vcpu,KVM_RUN,0)<0) err(1,"run"); if(run->exit_reason!=KVM_EXIT_IO||run->io.port!=port){ struct kvm_regs g; ioctl(vcpu,KVM_GET_REGS,&g); errx(1,"exit %d port %x rip %llx",run->exit_reason,run->io.port,g.rip);} return 1; }
uint32_t user_read(){ // run user code at 0x200000 until out 0x80, return eax
  struct kvm_regs g={0}; g.rip=0x200000; g.rflags=2; g.rsp=0x3ff000; ioctl(vcpu,KVM_SET_REGS,&g);
  struct kvm_sregs s; ioctl(vcpu,KVM_GET_SREGS,&s); s.cs=UCS; s.ss=USS; ioctl(vcpu,KVM_SET_SREGS,&s);
  runto(0x80); ioctl(vcpu,KVM_GET_REGS,&g); return g.rax; }
void kstub3(uint64_t rip,uint64_t rbx,uint64_t rax,uint64_t rcx){ struct kvm_regs g={0}; g.rip=rip; g.rbx=rbx; g.rax=rax; g.rcx=rcx; g.rflags=2; g.rsp=0x10000; ioctl(vcpu,KVM_SET_REGS,&g);
  struct kvm_sregs s; ioctl(vcpu,KVM_GET_SREGS,&s); s.cs=KCS; s.ss=KSS; ioctl(vcpu,KVM_SET_SREGS,&s); runto(0x81); }
void kstub(uint64_t rip,uint64_t rbx){kstub3(rip,rbx,0,0);}
int main(int argc,char**argv){
  int method=atoi(argv[1]);
  kvm=open("/dev/kvm",O_RDWR); vm=ioctl(kvm,KVM_CREATE_VM,0);
  mem=mmap(0,MEMSZ,PROT_READ|PROT_WRITE,MAP_SHARED|MAP_ANONYMOUS,-1,0);
  setregion(0,0);
  vcpu=ioctl(vm,KVM_CREATE_VCPU,0); run=mmap(0,ioctl(kvm,KVM_GET_VCPU_MMAP_SIZE,0),PROT_READ|PROT_WRITE,MAP_SHARED,vcpu,0);
  uint64_t*pml4=(void*)(mem+0x2000),*pdpt=(void*)(mem+0x3000),*pd=(void*)(mem+0x4000); pte=(void*)(mem+0x5000);
  pml4[0]=0x3000|7; pdpt[0]=0x4000|7; pd[0]=0x83; pd[1]=0x200000|0x87; pd[2]=0x5000|7;
  uint8_t u[]={0x8b,0x04,0x25,0x00,0x00,0x40,0x00, 0xe6,0x80, 0xf4};
  memcpy(mem+0x200000,u,sizeof u);
  uint8_t k[]={0x0f,0x20,0xd8, 0x0f,0x22,0xd8, 0xe6,0x81, 0xf4,  0x0f,0x01,0x3b, 0xe6,0x81,0xf4, 0x48,0x89,0x03, 0x0f,0x01,0x39, 0xe6,0x81, 0xf4};
  memcpy(mem+0x8000,k,sizeof k);
  uint64_t*g=(void*)(mem+0x1000); g[1]=0x00af9b000000ffff; g[2]=0x00cf93000000ffff; g[3]=0x00cff3000000ffff; g[4]=0x00affb000000ffff;
  g[5]=(0x2068)|((uint64_t)0xa000<<16)|(0x89ul<<40); g[6]=0; *(uint16_t*)(mem+0xa000+0x66)=0x68; memset(mem+0xa068,0,0x2001); mem[0xa068+0x2000]=0xff;
  struct kvm_sregs s; ioctl(vcpu,KVM_GET_SREGS,&s); s.cr3=0x2000; s.cr4=1<<5; s.cr0=0x80050033; s.efer=0x501; s.cs=UCS; s.ds=s.es=s.fs=s.gs=s.ss=USS;
  s.gdt.base=0x1000; s.gdt.limit=7*8-1; s.tr=(struct kvm_segment){.base=0xa000,.limit=0x2068,.selector=0x28,.present=1,.type=11}; ioctl(vcpu,KVM_SET_SREGS,&s);
  *(uint32_t*)(mem+0x1000000)=111; *(uint32_t*)(mem+0x1001000)=222;
  pte[0]=0x1000000|7;
  printf("first read: %u\n",user_read());
  int N=200; double t0=now(); int stale=0;
  for(int i=0;i<N;i++){
    uint64_t f= (i&1)?0x1000000:0x1001000; uint32_t want=(i&1)?111:222;
    if(method!=4) pte[0]=f|7;
    if(method==4) kstub3(0x800f,0x5000,f|7,0x400000);
    if(method==1) kstub(0x8000,0);
    if(method==2) kstub(0x8009,0x400000);
    if(method==3){ delregion(); setregion(0,0); }
    uint32_t got=user_read(); if(got!=want) stale++;
  }
  printf("method %d: %d of %d reads stale, %.1f us per iteration\n",method,stale,N,(now()-t0)/N*1e6);
  // also: clear the PTE: does the guest fault?
  return 0;
}
