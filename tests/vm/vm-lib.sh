# shellcheck shell=bash
# tests/vm/vm-lib.sh: the QEMU test bed of the `vm` tier. Sourced, never run.
#
#   vm_kernels_setup          fetch Debian's 6.1 and 6.12 cloud kernels into the cache
#                             and export KLEAP_VM_K61_* / KLEAP_VM_K612_*
#   vm_kexec_tools_setup      fetch kexec-tools into the cache, export KLEAP_VM_KEXEC
#   build_guest OUT BIN...    busybox initramfs guest (see the function)
#   run_vm NAME KERNEL INITRD APPEND TIMEOUT
#                             one QEMU run under TCG with a hard timeout; the console
#                             goes to a log file whose path it prints
#   vm_log_has / vm_wait_marker / vm_fail_report
#                             look at a console log; show its tail on failure
#   vm_layout big|default     the guest's RAM and pmem region (KLEAP_VM_MEM_MB/MEMMAP)
#   vm_free_port              a free TCP port on the host's loopback
#
# Environment:
#   KLEAP_VM_CACHE     kernels, kexec-tools, the QEMU lock  (/var/cache/kleap-vm)
#   KLEAP_VM_WORK      built guests and console logs        (/tmp/kleap-vm-$UID)
#   KLEAP_VM_QEMU      the QEMU binary                      (qemu-system-x86_64)
#   KLEAP_VM_QEMU_ARGS extra QEMU arguments (word-split)
#   KLEAP_VM_APPEND    extra guest kernel arguments, on every run
#   KLEAP_VM_STRIP     1: strip debug info off what goes in the guest (default 1)
#   KLEAP_VM_HOSTFWD   HOSTPORT:GUESTPORT: run_vm gives the guest a virtio NIC on QEMU's
#                      user network, with that TCP port forwarded from 127.0.0.1
#
# Everything here prints its progress on stderr; stdout carries only results.

KLEAP_VM_DIR=${KLEAP_VM_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
KLEAP_VM_CACHE=${KLEAP_VM_CACHE:-/var/cache/kleap-vm}
KLEAP_VM_WORK=${KLEAP_VM_WORK:-/tmp/kleap-vm-$(id -u)}
KLEAP_VM_QEMU=${KLEAP_VM_QEMU:-qemu-system-x86_64}
KLEAP_VM_STRIP=${KLEAP_VM_STRIP:-1}
# Package name patterns of the upgrade pair (Debian 12 and its 6.12 backport).
KLEAP_VM_K61_PATTERN='linux-image-6\.1\.0-[0-9]+-cloud-amd64'
KLEAP_VM_K612_PATTERN='linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned'
# Modules the guest needs for legacy pmem, for its NIC (virtio_pci is built into 6.12),
# for the engine's sock_diag queries and its network lock (nftables); their
# dependencies come along. The kernel loads the last ones on demand, through
# /sbin/modprobe and modules.alias, as on a distro.
KLEAP_VM_MODULES=(nd_e820 nd_pmem virtio_pci virtio_net
  unix_diag tcp_diag udp_diag netlink_diag af_packet_diag nf_tables)

vm_say() { printf 'vm: %s\n' "$*" >&2; }

# vm_layout big|default: the guest's RAM (KLEAP_VM_MEM_MB) and pmem region
# (KLEAP_VM_MEMMAP). By default 256 MiB at 768 MiB of a 1.5 GiB guest. `big` is for the
# scenarios that carry a whole system: 512 MiB of workload memory, and a 1 GiB store
# that can hold it, at 1.5 GiB of a 3 GiB guest (not at the top: QEMU reserves the last
# 128 KiB below 3 GiB, and a region that overlaps it is cut in two misaligned halves
# that nd_pmem refuses). `huge` (the 2 GiB benchmark) is a 7 GiB guest whose RAM above
# 4 GiB holds a 2.5 GiB store, from 4 GiB up.
vm_layout() {
  case $1 in
    default) KLEAP_VM_MEM_MB=1536 KLEAP_VM_MEMMAP='memmap=256M!768M' ;;
    big) KLEAP_VM_MEM_MB=3072 KLEAP_VM_MEMMAP='memmap=1024M!1536M' ;;
    huge) KLEAP_VM_MEM_MB=7168 KLEAP_VM_MEMMAP='memmap=2560M!4096M' ;;
    *) vm_warn "no guest layout '$1'"; return 1 ;;
  esac
}
vm_layout default

# vm_free_port: prints a TCP port nothing listens on at 127.0.0.1 (QEMU binds it for a
# hostfwd; only one QEMU of the bed runs at a time).
vm_free_port() {
  local port try
  for try in $(seq 1 50); do
    port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  return 1
}
vm_warn() { printf 'vm: warning: %s\n' "$*" >&2; }

# vm_skip_reason: prints why this machine cannot run the bed, or nothing.
vm_skip_reason() {
  if ! command -v "$KLEAP_VM_QEMU" >/dev/null 2>&1; then
    echo "$KLEAP_VM_QEMU not found (apt-get install qemu-system-x86)"
  elif ! vm__busybox >/dev/null; then
    echo "no static busybox (apt-get install busybox-static)"
  elif ! command -v cpio >/dev/null 2>&1; then
    echo "cpio not found (apt-get install cpio)"
  elif ! command -v dpkg-deb >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "not a Debian host: no apt-get/dpkg-deb to fetch the kernels"
  fi
}

# A static busybox: the guest has no other userland.
vm__busybox() {
  local b
  for b in "${KLEAP_VM_BUSYBOX:-}" /bin/busybox /usr/bin/busybox; do
    [[ -n $b && -x $b ]] || continue
    if [[ $(LC_ALL=C ldd "$b" 2>&1) == *'not a dynamic executable'* ]]; then
      echo "$b"
      return 0
    fi
  done
  return 1
}

# ---------------------------------------------------------------------------
# Package cache: apt-get download + dpkg-deb -x into $KLEAP_VM_CACHE/pkgs/NAME.

# vm__apt_newest REGEX: the newest package whose whole name matches REGEX and which
# has an installation candidate. Runs `apt-get update` once if nothing matches.
vm__apt_newest() {
  local re=$1 names pick try
  for try in 1 2; do
    names=$(apt-cache pkgnames linux-image- 2>/dev/null | grep -E "^${re}\$" || true)
    if [[ -n $names ]]; then
      # shellcheck disable=SC2086  # one name per word
      pick=$(LC_ALL=C apt-cache policy $names 2>/dev/null | awk '
        /^[^ ].*:$/ { name = substr($0, 1, length($0) - 1) }
        /^  Candidate:/ && $2 != "(none)" { print name }' | sort -V | tail -n 1)
      if [[ -n $pick ]]; then
        echo "$pick"
        return 0
      fi
    fi
    [[ $try == 1 ]] || break
    if [[ $(id -u) -ne 0 ]]; then
      vm_warn "no package matches $re and apt-get update needs root"
      return 1
    fi
    vm_say "apt-get update (no package matches $re in the lists)"
    apt-get update -qq >&2 || return 1
  done
  vm_warn "no installable package matches $re"
  return 1
}

# vm__fetch_pkg PKG: prints the directory PKG is extracted in, fetching it if needed.
vm__fetch_pkg() {
  local pkg=$1 root="$KLEAP_VM_CACHE/pkgs/$1" tmp deb
  if [[ -f $root/.complete ]]; then
    echo "$root"
    return 0
  fi
  mkdir -p "$KLEAP_VM_CACHE/pkgs" || return 1
  tmp=$(mktemp -d "$KLEAP_VM_CACHE/pkgs/.fetch.XXXXXX") || return 1
  vm_say "fetching $pkg into $KLEAP_VM_CACHE"
  # apt drops privileges to _apt for downloads when it can write the directory.
  chown _apt "$tmp" 2>/dev/null || true
  if ! (cd "$tmp" && apt-get download -qq "$pkg" 2>&1 | grep -v 'unsandboxed as root' >&2;
        exit "${PIPESTATUS[0]}"); then
    vm_warn "apt-get download $pkg failed"
    rm -rf "$tmp"
    return 1
  fi
  deb=$(find "$tmp" -maxdepth 1 -name '*.deb' | head -n 1)
  if [[ -z $deb ]] || ! dpkg-deb -x "$deb" "$tmp/root"; then
    vm_warn "cannot extract $pkg"
    rm -rf "$tmp"
    return 1
  fi
  basename "$deb" >"$tmp/root/.deb"
  touch "$tmp/root/.complete"
  rm -rf "$root"
  mv "$tmp/root" "$root" && rm -rf "$tmp" || return 1
  echo "$root"
}

# vm__kernel_setup VAR PATTERN: pins the kernel package in $KLEAP_VM_CACHE/VAR.pkg
# (so later runs reuse it without asking apt) and exports KLEAP_VM_<VAR>_{PKG,RELEASE,
# VMLINUZ,MODULES}.
vm__kernel_setup() {
  local var=$1 re=$2 pin="$KLEAP_VM_CACHE/$1.pkg" pkg="" root rel
  [[ -f $pin ]] && pkg=$(<"$pin")
  if [[ -z $pkg || ! -f $KLEAP_VM_CACHE/pkgs/$pkg/.complete ]]; then
    pkg=$(vm__apt_newest "$re") || return 1
  fi
  root=$(vm__fetch_pkg "$pkg") || return 1
  rel=$(find "$root/lib/modules" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | head -n 1)
  if [[ -z $rel || ! -f $root/boot/vmlinuz-$rel || ! -d $root/lib/modules/$rel/kernel ]]; then
    vm_warn "$pkg has no vmlinuz or modules; dropping it from the cache"
    rm -rf "$root"
    return 1
  fi
  echo "$pkg" >"$pin.tmp" && mv "$pin.tmp" "$pin"
  printf -v "KLEAP_VM_${var}_PKG" '%s' "$pkg"
  printf -v "KLEAP_VM_${var}_RELEASE" '%s' "$rel"
  printf -v "KLEAP_VM_${var}_VMLINUZ" '%s' "$root/boot/vmlinuz-$rel"
  printf -v "KLEAP_VM_${var}_MODULES" '%s' "$root/lib/modules/$rel"
  export "KLEAP_VM_${var}_PKG" "KLEAP_VM_${var}_RELEASE" "KLEAP_VM_${var}_VMLINUZ" \
    "KLEAP_VM_${var}_MODULES"
}

# vm__cache_lock: serialises cache updates between concurrent runs (fd 8).
vm__cache_lock() {
  mkdir -p "$KLEAP_VM_CACHE" || return 1
  exec 8>"$KLEAP_VM_CACHE/.lock" && flock 8
}
vm__cache_unlock() { exec 8>&-; }

vm_kernels_setup() {
  local rc=0
  vm__cache_lock || return 1
  vm__kernel_setup K61 "$KLEAP_VM_K61_PATTERN" && vm__kernel_setup K612 "$KLEAP_VM_K612_PATTERN" || rc=1
  vm__cache_unlock
  ((rc == 0)) && vm_say "kernels: $KLEAP_VM_K61_RELEASE and $KLEAP_VM_K612_RELEASE"
  return $rc
}

# vm_kexec_tools_setup: kexec-tools from the cache (not installed on the host, which
# has no kexec anyway), with the libraries it needs that the host lacks (Debian
# links it against the Xen libraries), fetched alongside. Exports KLEAP_VM_KEXEC and
# KLEAP_VM_LIBPATH (where ldd finds those libraries).
vm_kexec_tools_setup() {
  local root rc=0 pkg dep
  local -a queue=(kexec-tools) libdirs=()
  local -A seen=()
  vm__cache_lock || return 1
  while ((${#queue[@]})); do
    pkg=${queue[0]}
    queue=("${queue[@]:1}")
    [[ -n ${seen[$pkg]:-} ]] && continue
    seen[$pkg]=1
    if ! root=$(vm__fetch_pkg "$pkg"); then
      rc=1
      break
    fi
    [[ -d $root/usr/lib/x86_64-linux-gnu ]] && libdirs+=("$root/usr/lib/x86_64-linux-gnu")
    [[ -d $root/lib/x86_64-linux-gnu ]] && libdirs+=("$root/lib/x86_64-linux-gnu")
    # Library packages it depends on that the host does not have.
    for dep in $(apt-cache depends "$pkg" 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^lib/ { print $2 }'); do
      dpkg-query -W -f='${Status}' "$dep" 2>/dev/null | grep -q 'install ok installed' && continue
      queue+=("$dep")
    done
  done
  vm__cache_unlock
  ((rc == 0)) || return 1
  KLEAP_VM_KEXEC=${seen[kexec-tools]:+$KLEAP_VM_CACHE/pkgs/kexec-tools/sbin/kexec}
  KLEAP_VM_LIBPATH=$(IFS=:; echo "${libdirs[*]}")
  export KLEAP_VM_KEXEC KLEAP_VM_LIBPATH
  if [[ ! -x $KLEAP_VM_KEXEC ]] ||
     LC_ALL=C LD_LIBRARY_PATH=$KLEAP_VM_LIBPATH ldd "$KLEAP_VM_KEXEC" | grep -q 'not found'; then
    vm_warn "kexec-tools from the cache is incomplete"
    return 1
  fi
}

# ---------------------------------------------------------------------------
# Guest image.

# vm__install_file SRC DEST(in stage): copies, strips debug info off ELF files.
vm__install_file() {
  local src=$1 dst=$2
  mkdir -p "$(dirname "$dst")"
  rm -f "$dst"
  if [[ $KLEAP_VM_STRIP == 1 ]] && command -v strip >/dev/null 2>&1 &&
     [[ $(head -c 4 "$src" | od -An -c | tr -d ' ') == '177ELF' ]]; then
    strip --strip-debug -o "$dst" "$src" 2>/dev/null && chmod --reference="$src" "$dst" && return 0
  fi
  cp -L --preserve=mode "$src" "$dst"
}

# vm__install_libs STAGE BIN: every shared library BIN needs, the loader included, at
# the path ldd names. A 32-bit BIN goes through vm__install_libs32.
vm__install_libs() {
  local stage=$1 bin=$2 line path
  local out dst
  if [[ $(od -An -tu1 -j4 -N1 "$bin" 2>/dev/null | tr -d ' ') == 1 ]]; then
    vm__install_libs32 "$stage" "$bin"
    return
  fi
  out=$(LC_ALL=C LD_LIBRARY_PATH=${KLEAP_VM_LIBPATH:-} ldd "$bin" 2>&1) || return 0   # static

  while IFS= read -r line; do
    path=""
    if [[ $line =~ '=>'[[:space:]]+(/[^[:space:]]+) ]]; then
      path=${BASH_REMATCH[1]}
    elif [[ $line =~ ^[[:space:]]*(/[^[:space:]]+)[[:space:]]+\( ]]; then
      path=${BASH_REMATCH[1]}                  # the dynamic loader
    elif [[ $line == *'not found'* ]]; then
      vm_warn "$bin: $line"
      return 1
    fi
    [[ -n $path ]] || continue
    dst=$stage$path
    # Libraries fetched into the cache go where the guest's loader looks anyway.
    [[ $path == "$KLEAP_VM_CACHE"/* ]] && dst=$stage/usr/lib/x86_64-linux-gnu/$(basename "$path")
    if [[ ! -e $dst ]]; then
      vm__install_file "$path" "$dst" || return 1
    fi
  done <<<"$out"
  return 0
}

# vm__install_libs32 STAGE BIN: the same for a 32-bit BIN, from its ELF headers: ldd
# runs the 32-bit loader, which a host without IA-32 emulation can't. Its interpreter
# and, recursively, every DT_NEEDED library found in the host's 32-bit library
# directories, at the same paths in the guest (the loader searches those by default).
vm__install_libs32() {
  local stage=$1 bin=$2 interp lib f d path
  interp=$(LC_ALL=C readelf -lW "$bin" 2>/dev/null |
    sed -n 's/.*\[Requesting program interpreter: \(.*\)\]/\1/p')
  [[ -n $interp ]] || return 0   # static
  [[ -e $stage$interp ]] || vm__install_file "$interp" "$stage$interp" || return 1
  local -a todo=("$bin")
  local -A seen=()
  while ((${#todo[@]})); do
    f=${todo[0]}
    todo=("${todo[@]:1}")
    for lib in $(LC_ALL=C readelf -dW "$f" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
      [[ -n ${seen[$lib]:-} ]] && continue
      seen[$lib]=1
      path=""
      for d in /lib32 /usr/lib32 /lib/i386-linux-gnu /usr/lib/i386-linux-gnu; do
        [[ -e $d/$lib ]] && { path=$d/$lib; break; }
      done
      if [[ -z $path ]]; then
        vm_warn "$bin: the 32-bit library $lib is not on this host (apt-get install gcc-multilib)"
        return 1
      fi
      [[ -e $stage$path ]] || vm__install_file "$path" "$stage$path" || return 1
      todo+=("$path")
    done
  done
}

# vm__modinfo FILE FIELD: a field of a (possibly compressed) module's .modinfo.
vm__modinfo() {
  local f=$1 field=$2
  case $f in
    *.xz) xz -dc "$f" ;;
    *.zst) zstd -qdc "$f" ;;
    *.gz) gzip -dc "$f" ;;
    *) cat "$f" ;;
  esac | tr '\0' '\n' | grep -a -m 1 "^${field}=" | cut -d= -f2-
}

# vm__module_file MODDIR NAME: the file of module NAME ('-' and '_' are one).
vm__module_file() {
  local moddir=$1 name=$2
  find "$moddir/kernel" \( -name "${name}.ko*" -o -name "${name//_/-}.ko*" \
    -o -name "${name//-/_}.ko*" \) -print -quit
}

# vm__install_modules STAGE MODDIR: KLEAP_VM_MODULES and their dependencies from
# MODDIR, decompressed, plus the modules.dep/alias/builtin that busybox modprobe reads.
# Debian's packages ship no modules.dep (depmod runs at install time), so the
# dependencies come from each module's own .modinfo "depends=" field.
vm__install_modules() {
  local stage=$1 moddir=$2 rel dst name f rel_path plain
  rel=$(basename "$moddir")
  dst=$stage/lib/modules/$rel
  mkdir -p "$dst"
  local -A path_of=() deps_of=()
  local -a todo=("${KLEAP_VM_MODULES[@]}") order=()
  while ((${#todo[@]})); do
    name=${todo[0]}
    todo=("${todo[@]:1}")
    name=${name//-/_}
    [[ -n ${path_of[$name]:-} ]] && continue
    if grep -qE "/${name}\.ko\$" "$moddir/modules.builtin" 2>/dev/null; then
      path_of[$name]=builtin
      continue
    fi
    f=$(vm__module_file "$moddir" "$name")
    if [[ -z $f ]]; then
      vm_warn "$rel: no module $name"
      return 1
    fi
    rel_path=${f#"$moddir"/}
    plain=${rel_path%.xz}; plain=${plain%.zst}; plain=${plain%.gz}
    path_of[$name]=$plain
    mkdir -p "$dst/$(dirname "$plain")"
    case $f in
      *.xz) xz -dc "$f" >"$dst/$plain" ;;
      *.zst) zstd -qdc "$f" >"$dst/$plain" ;;
      *.gz) gzip -dc "$f" >"$dst/$plain" ;;
      *) cp "$f" "$dst/$plain" ;;
    esac || { vm_warn "$rel: cannot unpack $rel_path"; return 1; }
    deps_of[$name]=$(vm__modinfo "$dst/$plain" depends | tr ',' ' ')
    order+=("$name")
    # shellcheck disable=SC2206
    todo+=(${deps_of[$name]})
  done
  # modules.dep lists every dependency, the indirect ones too, each after every module
  # that needs it: modprobe loads them from the last one. (vm__all_deps lists a module
  # before what it needs; of a module listed twice, the last place is kept.)
  vm__all_deps() {
    local n=$1 d
    for d in ${deps_of[$n]}; do
      d=${d//-/_}
      [[ ${path_of[$d]} == builtin ]] && continue
      echo "${path_of[$d]}"
      vm__all_deps "$d"
    done
  }
  : >"$dst/modules.dep"
  : >"$dst/modules.alias"
  for name in "${order[@]}"; do
    echo "${path_of[$name]}: $(vm__all_deps "$name" |
      awk '{ last[$0] = NR; line[NR] = $0 } END { for (i = 1; i <= NR; i++) if (last[line[i]] == i) print line[i] }' |
      tr '\n' ' ' | sed 's/ $//')" \
      >>"$dst/modules.dep"
    while IFS= read -r f; do
      [[ -n $f ]] && echo "alias $f $name" >>"$dst/modules.alias"
    done < <(tr '\0' '\n' <"$dst/${path_of[$name]}" | grep -a '^alias=' | cut -d= -f2-)
  done
  for f in modules.builtin modules.order; do
    [[ -f $moddir/$f ]] && cp "$moddir/$f" "$dst/$f"
  done
  sed -i -E 's/\.ko\.(xz|zst|gz)$/.ko/' "$dst/modules.order" 2>/dev/null || true
  vm_say "modules for $rel: ${order[*]}"
}

# vm__cpio STAGE OUT [gzip|none]: packs STAGE as a newc archive.
vm__cpio() {
  local stage=$1 out=$2 comp=${3:-gzip}
  (
    cd "$stage" || exit 1
    find . -mindepth 1 -print0 | LC_ALL=C sort -z |
      cpio --null -o -H newc --quiet -R 0:0 --reproducible |
      if [[ $comp == gzip ]]; then gzip -6n; else cat; fi
  ) >"$out.tmp" && mv "$out.tmp" "$out"
}

# build_guest OUT.cpio.gz BIN...
# The guest: busybox-static with its applet links, kexec-tools, the given binaries
# (in /bin; kleap-init also as /kleap-init, its rdinit= entry) with every shared
# library they need, the legacy pmem and NIC modules of both kernels, /init =
# guest-init.sh, /etc/inittab (read only when a scenario makes busybox init PID 1),
# /bin/kleap-wl-check, /kleap-entry (loads the pmem modules, then execs /kleap-init), and
# /kernels/{vmlinuz-6.12,initrd.cpio.gz} for the kexec, where initrd.cpio.gz is the
# same guest without /kernels.
# Needs vm_kernels_setup and vm_kexec_tools_setup first.
build_guest() {
  local out=$1; shift
  local stage rc=0
  stage=$(mktemp -d "${TMPDIR:-/tmp}/kleap-guest.XXXXXX") || return 1
  vm__build_guest "$stage" "$out" "$@" || rc=1
  rm -rf "$stage" "$stage.kernels"
  if ((rc == 0)); then
    vm_say "guest $out: $(($(stat -c %s "$out") / 1024)) KiB"
  else
    rm -f "$out" "$out.inner" "$out.kernels" "$out.tmp"
    vm_warn "building the guest failed"
  fi
  return $rc
}

# (No set -e here: it is void in a function called from a condition.)
vm__build_guest() {
  local stage=$1 out=$2; shift 2
  local bb bin name a
  mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc,root,lib64,lib/x86_64-linux-gnu,kernels} ||
    return 1
  bb=$(vm__busybox) && cp "$bb" "$stage/bin/busybox" || return 1
  while IFS= read -r a; do
    [[ -e $stage/$a || $a == bin/busybox ]] && continue
    mkdir -p "$stage/$(dirname "$a")" && ln -s /bin/busybox "$stage/$a" || return 1
  done < <("$bb" --list-full)
  # Nodes the kernel needs before /init can mount devtmpfs (root only).
  if [[ $(id -u) -eq 0 ]]; then
    mknod -m 600 "$stage/dev/console" c 5 1 && mknod -m 666 "$stage/dev/null" c 1 3 || return 1
  fi
  vm__install_file "$KLEAP_VM_KEXEC" "$stage/sbin/kexec" || return 1
  vm__install_libs "$stage" "$KLEAP_VM_KEXEC" || return 1
  for bin in "$@"; do
    name=$(basename "$bin")
    vm__install_file "$bin" "$stage/bin/$name" || return 1
    vm__install_libs "$stage" "$bin" || return 1
    if [[ $name == kleap-init ]]; then
      mv "$stage/bin/kleap-init" "$stage/kleap-init" && ln -s /kleap-init "$stage/bin/kleap-init" || return 1
    fi
  done
  # A system bus for kleapd: the host's dbus-daemon with a config that lets root do
  # everything (the guest has no other users).
  if command -v dbus-daemon >/dev/null 2>&1; then
    vm__install_file "$(command -v dbus-daemon)" "$stage/usr/bin/dbus-daemon" || return 1
    vm__install_libs "$stage" "$(command -v dbus-daemon)" || return 1
    mkdir -p "$stage/run/dbus" && cat >"$stage/etc/kleap-system-bus.conf" <<'BUS' || return 1
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=/run/dbus/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
BUS
  fi
  vm__install_modules "$stage" "$KLEAP_VM_K61_MODULES" || return 1
  vm__install_modules "$stage" "$KLEAP_VM_K612_MODULES" || return 1
  install -m 755 "$KLEAP_VM_DIR/guest-init.sh" "$stage/init" || return 1
  install -m 755 "$KLEAP_VM_DIR/kleap-wl-check" "$stage/bin/kleap-wl-check" || return 1
  # For the scenarios whose PID 1 is busybox init (guest-init.sh execs it): /init again,
  # in the role of each entry. It is part of the image, not written at run time,
  # because the new kernel unpacks the image afresh.
  cat >"$stage/etc/inittab" <<'INITTAB' || return 1
::sysinit:/init sysinit
::once:/init once
::shutdown:/init shutdown
INITTAB
  # An rdinit= entry that does what a distro initramfs does before it hands over to
  # kleap-init: load the pmem modules.
  cat >"$stage/kleap-entry" <<'ENTRY' || return 1
#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
[ -e /proc/self ] || mount -t proc proc /proc
grep -q '^sysfs /sys ' /proc/mounts || mount -t sysfs sysfs /sys
grep -q '^devtmpfs /dev ' /proc/mounts || mount -t devtmpfs devtmpfs /dev
modprobe nd_e820; modprobe nd_pmem
i=0; while [ ! -b /dev/pmem0 ] && [ $i -lt 100 ]; do usleep 100000; i=$((i + 1)); done
exec /kleap-init "$@"
ENTRY
  chmod 755 "$stage/kleap-entry" || return 1
  # What the guest knows about itself.
  {
    echo "KT_K61_RELEASE=$KLEAP_VM_K61_RELEASE"
    echo "KT_K612_RELEASE=$KLEAP_VM_K612_RELEASE"
    echo "KT_BINS='$(for bin in "$@"; do basename "$bin"; done | tr '\n' ' ')'"
  } >"$stage/etc/kleaptest.conf" || return 1
  echo 'root:x:0:0:root:/root:/bin/sh' >"$stage/etc/passwd" &&
    echo 'root:x:0:' >"$stage/etc/group" || return 1
  # The guest without /kernels: what the new kernel boots with.
  vm__cpio "$stage" "$out.inner" || return 1
  # /kernels goes in a second, uncompressed archive appended to the first (the
  # kernel unpacks concatenated archives; vmlinuz and the inner archive are
  # compressed already). The gzip member is padded to 4 bytes so that the next
  # cpio header is aligned.
  local kst=$stage.kernels pad
  mkdir -p "$kst/kernels" &&
    cp "$KLEAP_VM_K612_VMLINUZ" "$kst/kernels/vmlinuz-6.12" &&
    cp "$out.inner" "$kst/kernels/initrd.cpio.gz" &&
    vm__cpio "$kst" "$out.kernels" none || return 1
  pad=$(((4 - $(stat -c %s "$out.inner") % 4) % 4))
  { cat "$out.inner" && head -c "$pad" /dev/zero && cat "$out.kernels"; } >"$out.tmp" || return 1
  mv "$out.tmp" "$out" && rm -f "$out.inner" "$out.kernels"
}

# vm_guest_hash BIN...: a hash of everything build_guest puts in the guest.
vm_guest_hash() {
  {
    cat "$KLEAP_VM_DIR/vm-lib.sh" "$KLEAP_VM_DIR/guest-init.sh" "$KLEAP_VM_DIR/kleap-wl-check"
    echo "$KLEAP_VM_K61_PKG $KLEAP_VM_K612_PKG $KLEAP_VM_STRIP"
    sha256sum "$(vm__busybox)" "$KLEAP_VM_KEXEC" "$@" | awk '{print $1}'
    echo "$KLEAP_VM_LIBPATH"
    for b in "$@"; do basename "$b"; done
  } | sha256sum | cut -c1-16
}

# vm_guest BIN...: prints the path of a guest with these binaries, building it only
# when no guest of the same inputs is in $KLEAP_VM_WORK/guests.
vm_guest() {
  local h dir out
  h=$(vm_guest_hash "$@") || return 1
  dir=$KLEAP_VM_WORK/guests
  out=$dir/guest-$h.cpio.gz
  mkdir -p "$dir" || return 1
  if [[ ! -s $out ]]; then
    build_guest "$out" "$@" || return 1
    # Keep the four newest guests.
    # shellcheck disable=SC2012  # our own names, no odd characters
    ls -1t "$dir"/guest-*.cpio.gz 2>/dev/null | tail -n +5 | xargs -r rm -f
  else
    vm_say "guest $out (cached)"
    touch "$out"
  fi
  echo "$out"
}

# ---------------------------------------------------------------------------
# Running a guest.

# vm__reader LOG TLOG: copies the console to LOG, and with the host's wall-clock time
# (seconds since the epoch) in front of each line to TLOG.
vm__reader() {
  local line
  exec 3>>"$1" 4>>"$2"
  while IFS= read -r line || [[ -n $line ]]; do
    line=${line%$'\r'}
    printf '%s\n' "$line" >&3
    printf '%s %s\n' "$EPOCHREALTIME" "$line" >&4
  done
}

# run_vm NAME KERNEL INITRD APPEND TIMEOUT
# Boots KERNEL with INITRD under TCG (KLEAP_VM_MEM_MB of RAM, KLEAP_VM_MEMMAP; a NIC when
# KLEAP_VM_HOSTFWD is set), the serial console logged to
# $KLEAP_VM_WORK/logs/NAME.log (and NAME.tlog with host timestamps). Returns when
# QEMU exits (the guest powers off), 15 s after the guest printed
# "KLEAPTEST: DONE", or after TIMEOUT seconds, when QEMU is killed (status 124).
# Prints the log path on stdout and sets VM_LOG / VM_TLOG. Only one QEMU runs at a
# time on a machine: it waits for the others ($KLEAP_VM_CACHE/qemu.lock).
run_vm() {
  local name=$1 kernel=$2 initrd=$3 append=$4 timeout=$5
  local logdir=$KLEAP_VM_WORK/logs fifo qpid rpid rc=0 start deadline done_at="" lockfd
  mkdir -p "$logdir" "$KLEAP_VM_CACHE" || return 1
  VM_LOG=$logdir/$name.log
  VM_TLOG=$logdir/$name.tlog
  : >"$VM_LOG"
  : >"$VM_TLOG"
  fifo=$(mktemp -u "$logdir/.$name.fifo.XXXXXX")
  mkfifo "$fifo" || return 1
  exec {lockfd}>"$KLEAP_VM_CACHE/qemu.lock"
  if ! flock -n "$lockfd"; then
    vm_say "waiting for another QEMU of the test bed to finish"
    flock "$lockfd"
  fi
  local -a cmd=("$KLEAP_VM_QEMU" -accel tcg -m "$KLEAP_VM_MEM_MB" -smp 1 -nographic -no-reboot
    -kernel "$kernel" -initrd "$initrd"
    -append "console=ttyS0 tsc=reliable $KLEAP_VM_MEMMAP panic=-1 printk.time=1 $append ${KLEAP_VM_APPEND:-}")
  if [[ -n ${KLEAP_VM_HOSTFWD:-} ]]; then
    cmd+=(-nic "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:${KLEAP_VM_HOSTFWD%%:*}-:${KLEAP_VM_HOSTFWD#*:}")
  fi
  # shellcheck disable=SC2206  # extra arguments are meant to be split
  [[ -n ${KLEAP_VM_QEMU_ARGS:-} ]] && cmd+=($KLEAP_VM_QEMU_ARGS)
  printf '%s ' "${cmd[@]@Q}" >"$logdir/$name.cmd"
  echo >>"$logdir/$name.cmd"
  vm_say "booting $name: $(basename "$kernel"), timeout ${timeout}s, log $VM_LOG"
  vm__reader "$VM_LOG" "$VM_TLOG" <"$fifo" >/dev/null 2>&1 &
  rpid=$!
  start=$EPOCHREALTIME
  "${cmd[@]}" </dev/null >"$fifo" 2>&1 &
  qpid=$!
  echo "$start" >"$logdir/$name.start"
  deadline=$((SECONDS + timeout))
  while kill -0 "$qpid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      vm_warn "$name: hard timeout after ${timeout}s: killing QEMU (pid $qpid)"
      rc=124
      break
    fi
    if [[ -z $done_at ]] && grep -q '^KLEAPTEST: DONE' "$VM_LOG" 2>/dev/null; then
      done_at=$SECONDS
    fi
    if [[ -n $done_at ]] && ((SECONDS - done_at > 15)); then
      vm_warn "$name: the guest said DONE but did not power off: killing QEMU (pid $qpid)"
      break
    fi
    sleep 0.2
  done
  if kill -0 "$qpid" 2>/dev/null; then
    kill -TERM "$qpid" 2>/dev/null
  
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      kill -0 "$qpid" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL "$qpid" 2>/dev/null
  fi
  local qrc=0
  wait "$qpid" || qrc=$?
  wait "$rpid" 2>/dev/null
  ((rc == 124)) && echo "vm: HARD TIMEOUT after ${timeout}s, QEMU killed" >>"$VM_LOG"
  exec {lockfd}>&-
  rm -f "$fifo"
  vm_say "$name: QEMU exited ($qrc) after $(vm__elapsed "$start" "$EPOCHREALTIME") s"
  echo "$VM_LOG"
  return $rc
}

vm__elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# vm_log_has LOG REGEX: does the console log hold a line matching REGEX (ERE)?
vm_log_has() { grep -qE -- "$2" "$1"; }

# vm_wait_marker LOG REGEX SECONDS: waits until REGEX shows up in LOG (for tests that
# talk to a guest while it runs; run_vm in the background).
vm_wait_marker() {
  local log=$1 re=$2 deadline=$((SECONDS + $3))
  while ((SECONDS < deadline)); do
    grep -qE -- "$re" "$log" 2>/dev/null && return 0
    sleep 0.2
  done
  return 1
}

# vm_fail_report LOG WHY: prints why, the markers, the console's tail, and where the
# full log is kept.
vm_fail_report() {
  local log=$1 why=$2
  {
    echo "vm: FAIL: $why"
    echo "vm: ---- markers ----"
    grep -E '^KLEAPTEST: ' "$log" | tail -n 40
    echo "vm: ---- console tail ($log) ----"
    tail -n "${KLEAP_VM_TAIL:-60}" "$log"
    echo "vm: ---- end ----"
    echo "vm: full console log kept at $log"
  } >&2
}

# vm_timings LOG: the boot and kexec times of a run, from its host-timestamped console
# (LOG's .tlog and .start), as key=value lines (seconds):
#   boot_host           QEMU start -> the first /init's first marker (host clock)
#   boot_uptime         the first kernel's uptime at that marker
#   kexec_load          kexec -s -l (kexec-tools runs only)
#   kexec_gap           last console line before the new kernel -> its first line (host)
#   kexec_to_init_host  "kexec-e" marker -> first line of the new kernel's userspace:
#                       kleap-init's start line if there is one, else /init's (host)
#   new_uptime_at_init  the new kernel's own clock at that point (kleap-init's
#                       CLOCK_BOOTTIME, or /proc/uptime in /init)
#   new_printk_run_init the new kernel's printk time of "Run ... as init process"
vm_timings() {
  local log=$1 tlog=${1%.log}.tlog start
  start=$(cat "${1%.log}.start" 2>/dev/null || echo 0)
  awk -v t0="$start" '
    function rest(   i, s) { s = $2; for (i = 3; i <= NF; i++) s = s " " $i; return s }
    {
      t = $1; line = rest()
      if (!k && line ~ /^KLEAPTEST: init-start/ && !boot) {
        boot = 1; printf "boot_host=%.2f\n", t - t0
        if (match(line, /uptime=[0-9.]+/)) print "boot_uptime=" substr(line, RSTART + 7, RLENGTH - 7)
      }
      if (line ~ /^KLEAPTEST: TIME load-s /) { split(line, a, " "); print "kexec_load=" a[4] }
      if (line ~ /^KLEAPTEST: kexec-e/) { k = t; first = 0; ki = 0; ii = 0; ri = 0 }
      if (k && !first && line ~ /Linux version/ && t > k - 1) {
        first = 1; printf "kexec_gap=%.2f\n", t - prev
      }
      if (k && first && !ki && match(line, /kleap-init: start [0-9]+/)) {
        ki = 1; split(substr(line, RSTART, RLENGTH), a, " ")
        printf "kexec_to_init_host=%.2f\nnew_uptime_at_init=%.3f\n", t - k, a[3] / 1e9
      }
      if (k && first && !ki && !ii && line ~ /^KLEAPTEST: init-start/) {
        ii = 1; printf "kexec_to_init_host=%.2f\n", t - k
        if (match(line, /uptime=[0-9.]+/)) print "new_uptime_at_init=" substr(line, RSTART + 7, RLENGTH - 7)
      }
      if (k && first && !ri && match(line, /\[ *[0-9]+\.[0-9]+\] Run .* as init process/)) {
        ri = 1; s = line; sub(/^[^[]*\[ */, "", s); sub(/\].*/, "", s); print "new_printk_run_init=" s
      }
      prev = t
    }' "$tlog"
}

# The project's binaries that go into the guest.
KLEAP_VM_PROJECT_BINS=(kleap kleap-init kleap-kexec memstore-stress kleapd upgrade-kernel)
# The workloads (tests/vm/workloads) of the scenarios that carry a whole system: only
# their guests have them. wl-mixed execs wl-mixed32 and the other way round.
# shellcheck disable=SC2034  # used by run-vm-test.sh
KLEAP_VM_WORKLOAD_BINS=(wl-counter wl-counter32 wl-tree wl-mixed wl-mixed32 wl-mem wl-tmpfs wl-tcp)
KLEAP_VM_EXTRA_BINS=()

# vm_find_bins DIR BIN...: prints BIN... and, one a line, those of
# KLEAP_VM_PROJECT_BINS (and of KLEAP_VM_EXTRA_BINS, which a scenario may set) not among
# them that are found under DIR (a build tree).
vm_find_bins() {
  local dir=$1 name b f have
  shift
  for b in "$@"; do echo "$b"; done
  [[ -n $dir ]] || return 0
  local -i depth=3   # the workloads sit one deeper (tests/vm/workloads)
  for name in "${KLEAP_VM_PROJECT_BINS[@]}" - "${KLEAP_VM_EXTRA_BINS[@]}"; do
    [[ $name == - ]] && { depth=4; continue; }
    have=0
    for b in "$@"; do [[ $(basename "$b") == "$name" ]] && have=1; done
    ((have)) && continue
    f=$(find "$dir" -maxdepth "$depth" -name "$name" -type f -perm -u+x -print -quit 2>/dev/null)
    [[ -n $f ]] && echo "$f"
  done
  return 0
}

# vm_has_bin NAME BIN...: is NAME among BIN... (by file name)?
vm_has_bin() {
  local name=$1 b
  shift
  for b in "$@"; do [[ $(basename "$b") == "$name" ]] && return 0; done
  return 1
}
