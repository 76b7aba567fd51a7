# Sourced (bash) by the emulated legs' image builders (tests/xen/build-dom0.sh,
# backends/kvm/nested/run.sh): what a host needs in its image to run hyperd's
# pod networks, the same on both legs.
#  - net_check: fails naming the Debian package when a tool or plugin is missing.
#  - net_tools Z: iproute2 (ip, tc), iptables (nft backend, with the xtables
#    extensions it dlopen()s), curl (the network e2e cases fetch pages with
#    it), kmod as /sbin/modprobe (the kernel's request_module runs it), the
#    CNI plugins of containernetworking-plugins in /usr/lib/cni and the
#    default conflist in /etc/hyper/cni/net.d. NET_LIBS: the files whose
#    libraries the caller copies.
#  - net_modules Z KDIR KVER BOOT...: the modules named (and the netfilter,
#    tc, bridge directories whole), each with what it depends on, in their
#    tree with modules.dep (depmod -b), so that modprobe and the kernel's
#    on-demand loading (tc actions, nf_tables expressions) work.
NET_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NET_CONFLIST=$NET_ROOT/config/cni/10-hyper.conflist
NET_CNI_PLUGINS="bridge host-local loopback portmap firewall tuning bandwidth"
NET_BINS="/usr/sbin/ip /usr/sbin/tc /usr/sbin/xtables-nft-multi /usr/bin/kmod /usr/bin/curl"

net_check() {
  local b p
  for b in $NET_BINS /usr/sbin/depmod /usr/sbin/modinfo; do
    [ -x "$b" ] || { echo "$b missing (apt-get install iproute2 iptables kmod curl)" >&2; return 1; }
  done
  for p in $NET_CNI_PLUGINS; do
    [ -x "/usr/lib/cni/$p" ] || { echo "/usr/lib/cni/$p missing (apt-get install containernetworking-plugins)" >&2; return 1; }
  done
}

net_tools() {
  local z=$1 n p
  mkdir -p "$z"/{sbin,usr/sbin,usr/bin,usr/lib/cni,usr/lib/x86_64-linux-gnu,etc/hyper/cni/net.d}
  cp /usr/sbin/ip /usr/sbin/tc /usr/sbin/xtables-nft-multi "$z/usr/sbin/"
  for n in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -sf xtables-nft-multi "$z/usr/sbin/$n"
  done
  cp -a /usr/lib/x86_64-linux-gnu/xtables "$z/usr/lib/x86_64-linux-gnu/"
  cp /usr/bin/curl "$z/usr/bin/"
  cp /usr/bin/kmod "$z/sbin/kmod"
  for n in modprobe insmod rmmod lsmod depmod modinfo; do ln -sf kmod "$z/sbin/$n"; done
  for p in $NET_CNI_PLUGINS; do cp "/usr/lib/cni/$p" "$z/usr/lib/cni/"; done
  cp "$NET_CONFLIST" "$z/etc/hyper/cni/net.d/10-hyper.conflist"
  NET_LIBS="$NET_BINS $(echo /usr/lib/x86_64-linux-gnu/xtables/*.so) $(for p in $NET_CNI_PLUGINS; do echo "/usr/lib/cni/$p"; done)"
}

# Directories shipped whole; loaded on demand by name: libcrc32c (nf_tables,
# nf_nat) asks the crypto API for crc32c.
NET_MODDIRS="net/netfilter net/ipv4/netfilter net/ipv6/netfilter net/sched net/bridge"
NET_ONDEMAND="crc32c_generic"

net_modules() {
  local z=$1 k=$2 kver=$3 m d f
  shift 3
  local md=$z/lib/modules/$kver
  declare -A seen=()
  mod_file() { # the .ko of a module name (- and _ are the same to kmod)
    local f; f=$(find "$k" -name "${1//_/[-_]}.ko" | head -1)
    [ -n "$f" ] || { echo "no module $1 in $k" >&2; return 1; }
    echo "$f"
  }
  add_mod() { # add_mod FILE: the module and what it depends on
    local f=$1 d g
    [ -n "${seen[$f]:-}" ] && return 0
    seen[$f]=1
    mkdir -p "$md/kernel/$(dirname "${f#"$k"/}")"; cp "$f" "$md/kernel/${f#"$k"/}"
    for d in $(modinfo -F depends "$f" | tr ',' ' '); do
      g=$(mod_file "$d") || return 1
      add_mod "$g" || return 1
    done
  }
  for m in "$@" $NET_ONDEMAND; do f=$(mod_file "$m") && add_mod "$f" || return 1; done
  for d in $NET_MODDIRS; do for f in "$k/$d"/*.ko; do add_mod "$f" || return 1; done; done
  cp "$k/.."/modules.{builtin,builtin.modinfo,order} "$md/"
  depmod -b "$z" "$kver"
}
