# Writes the linux_syscalls target's seed inputs into corpus/: sequences
# of calls a program makes (files, writes, a huge reservation, processes,
# pipes and polls, socket pairs, signals and timers), in the encoding of
# fuzz/tests/targets.rs's syscall_sequence. Run: python3 seeds.py
import struct, os
d=os.path.join(os.path.dirname(os.path.abspath(__file__)),'corpus')
def small(v): assert v < 32; return bytes([(v<<3)|0])
def path(i): return bytes([(i<<3)|2])
def dic(j): return bytes([(j<<3)|3])
def scr(off): return bytes([4])+struct.pack('<H',off)
def raw(v): return bytes([5])+struct.pack('<Q',v & (2**64-1))
def neg(n): return bytes([((n-1)<<3)|6])
def res(i): return bytes([(i<<3)|7])
def call(nr,*args,thread=0):
    args=list(args)+[small(0)]*(6-len(args))
    return struct.pack('<H',nr+340*thread)+b''.join(args)
seeds={
 # open, read, stat, map and close a file; list a directory; a procfs file
 'files': [call(257,raw(-100),path(0),small(0)), call(0,res(0),scr(0x1800),raw(64)),
           call(5,res(0),scr(0x1a00)), call(9,small(0),raw(4096),small(1),small(2),res(0),small(0)),
           call(3,res(0)), call(2,path(3),raw(0o200000)), call(217,res(1),scr(0x1a00),raw(512)),
           call(2,path(2),small(0)), call(0,res(3),scr(0x1800),raw(1024)), call(19,res(3),dic(1),small(2))],
 # create, write, rename, truncate and remove files in /tmp
 'writes': [call(2,path(1),raw(0o102),raw(0o644)), call(1,res(0),scr(0),raw(32)),
            call(20,res(0),dic(1),small(2)), call(77,res(0),raw(1<<40)), call(8,res(0),raw(1<<39),small(0)),
            call(82,path(1),path(6)), call(87,path(1)), call(83,path(1),raw(0o755)), call(84,path(1))],
 # a reservation of 32 TiB, protected, unmapped piecewise, reprotected
 'reserve': [call(9,small(0),raw(1<<45),small(0),raw(0x4022),neg(1),small(0)),
             call(10,res(0),raw(1<<30),small(3)), call(11,res(0),raw(1<<44)),
             call(9,small(0),raw(1<<20),small(3),raw(0x8022),neg(1),small(0)),
             call(28,res(3),raw(1<<20),small(4)), call(25,res(3),raw(1<<20),raw(1<<21),small(1)),
             call(12,raw(1<<44)), call(12,small(0))],
 # fork, vfork, exec and wait
 'processes': [call(57), call(61,neg(1),scr(0x1a00),small(0),small(0)), call(56,raw(0x11),small(0)),
               call(58), call(59,path(4),dic(2),small(0),thread=1), call(62,small(1),small(9)),
               call(247,small(0),small(0),scr(0x1a00),small(4))],
 # pipes, polls, epoll and eventfd
 'pipes': [call(293,scr(0x1a00),small(0)), call(1,small(4),scr(0),raw(16)), call(7,dic(3),small(2),small(0)),
           call(0,small(3),scr(0x1800),raw(16)), call(291,small(0)), call(233,res(0),small(1),small(3),dic(3)),
           call(290,small(0),small(0)), call(232,res(0),scr(0x1a00),small(4),small(0)), call(23,small(8),dic(3),small(0),small(0),dic(0))],
 # a socket pair: send and receive, messages, options, names, shutdown
 'sockets': [call(53,small(1),raw(0x80801),small(0),scr(0x1a00)), call(44,small(3),scr(0),raw(16)),
             call(45,small(4),scr(0x1800),raw(8),small(2)), call(46,small(3),scr(0x1a00),small(0)),
             call(47,small(4),scr(0x1a00),raw(0x40)), call(55,small(3),small(1),small(3),scr(0x1800),scr(0x1a00)),
             call(51,small(4),scr(0x1800),scr(0x1a00)), call(48,small(3),small(1)), call(1,small(3),scr(0),raw(4)),
             call(7,dic(3),small(2),small(0)), call(3,small(4))],
 # a server and a client on the loopback: socket, bind, listen, connect, accept, names
 'servers': [call(41,small(2),raw(0x80801),small(0)), call(49,small(3),scr(0x1800),raw(16)),
             call(50,small(3),small(5)), call(41,small(10),small(1),small(0)), call(42,small(4),scr(0x1800),raw(28)),
             call(288,small(3),scr(0x1a00),scr(0x1800),raw(0x80000)), call(52,small(5),scr(0x1a00),scr(0x1800)),
             call(41,small(1),small(1),small(0)), call(49,small(6),scr(0x1810),raw(12)), call(50,small(6),small(1)),
             call(42,small(3),scr(0x1810),raw(12)), call(54,small(4),small(6),small(1),scr(0x1800),raw(4)),
             call(3,small(3))],
 # signals, sleeps, timers, alarms, futexes
 'time': [call(13,small(10),dic(3),small(0),small(8)), call(14,small(0),dic(3),small(0),small(8)),
          call(37,raw(2**40)), call(38,small(0),dic(1),small(0)),
          call(222,small(1),small(0),scr(0x1a00)), call(223,small(0),small(0),dic(1),small(0)),
          call(202,scr(0x1a00),small(0),small(0),dic(0)), call(202,scr(0x1a00),small(1),small(1)),
          call(62,small(1),small(14)), call(35,dic(0),scr(0x1a00)), call(230,small(1),small(0),dic(0),small(0))],
}
os.makedirs(d,exist_ok=True)
for name,calls in seeds.items():
    open(os.path.join(d,name),'wb').write(b''.join(calls))
