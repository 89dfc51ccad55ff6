# Suite `failclosed` of tests/vm/guest/init (sourced by it, so it uses its run/check/result helpers and
# variables): the fail-closed cases where the kernel's own behaviour is the point (tests/kernel_fail_closed.rs).
# Payload: /aapl/src/<case>/ (ConfigMap contents), /aapl/host/firefox (a distribution profile in 4.0 syntax).

# F1: a distribution's profile, loaded unconfined from a file the parser of old could not read, is never replaced
# by a ConfigMap profile of the same name.
scenario_F1() {
    echo "AAPL-BEGIN F1"
    cp /aapl/host/firefox "$DEST/firefox"
    run F1 host-load "$PARSER" --replace --base "$DEST" "$DEST/firefox"
    check F1 "the distribution's firefox is loaded (exit $RC)" grep -qxF 'firefox (unconfined)' "$PROFILES"
    cm_set /aapl/src/f1
    run F1 copy $COPY
    check F1 "copy refuses to claim firefox with exit 3 (got $RC)" [ "$RC" -eq 3 ]
    check F1 "copy names firefox and the way to adopt it" grep -q 'firefox.*--adopt-loaded' "/tmp/err.F1.copy"
    check F1 "our file was not written" [ ! -e "$DEST/ff" ]
    check F1 "the kernel still has the distribution's firefox, unconfined" grep -qxF 'firefox (unconfined)' "$PROFILES"
    echo "AAPL-DONE F1"
}

# The tasks below block on a FIFO, /run/go.TAG, opened under the policy in force at their start; `go TAG` releases
# one, which then tries to write /etc/aapl-fc-TAG and /tmp/aapl-fc-TAG under whatever the kernel holds by then.
TASK='echo >"/run/ready.$0"; read x <"/run/go.$0"; echo x >"/etc/aapl-fc-$0"; echo y >"/tmp/aapl-fc-$0"'
task_prepare() {
    rm -f "/run/go.$1" "/run/ready.$1" "/etc/aapl-fc-$1" "/tmp/aapl-fc-$1"
    mkfifo "/run/go.$1"
}
# task_started TAG: records the task's pid and waits (bounded) until it is about to block on its FIFO
task_started() {
    eval "PID_$1=\$!"
    n=0
    while [ ! -e "/run/ready.$1" ] && [ "$n" -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
}
# under NAME TAG: the task runs under profile NAME (set at exec, as a container runtime does)
under() {
    task_prepare "$2"
    as-profile "$1" sh -c "$TASK" "$2" </dev/null >/dev/null 2>&1 &
    task_started "$2"
}
# unconfined_task TAG: the same task, unconfined (the control)
unconfined_task() {
    task_prepare "$1"
    sh -c "$TASK" "$1" </dev/null >/dev/null 2>&1 &
    task_started "$1"
}
# in_hat TAG: the task runs under aapl-fc-p and changes into its hat `wide` before it blocks
in_hat() {
    task_prepare "$1"
    as-profile aapl-fc-p sh -c 'echo -n "changehat 4242^wide" >/proc/self/attr/current || exit 98; '"$TASK" "$1" \
        </dev/null >/dev/null 2>&1 &
    task_started "$1"
}
# go TAG: releases the task (the FIFO opened read-write, so this never blocks) and waits (bounded) for its end
go() {
    eval "pid=\$PID_$1"
    echo go 1<>"/run/go.$1"
    n=0
    while [ -d "/proc/$pid" ] && [ "$n" -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
    wait "$pid" 2>/dev/null
}
# expect_label SCENARIO TAG NAME: the task of TAG is still confined by NAME
expect_label() {
    eval "pid=\$PID_$2"
    have=$(cat "/proc/$pid/attr/current" 2>&1)
    check "$1" "the task under $3 is still confined by it (attr/current: $have)" [ "$have" = "$3 (enforce)" ]
}
# expect_write_denied SCENARIO TAG: the released task's write to /etc was refused
expect_write_denied() {
    check "$1" "the task of $2 is denied the write to /etc/aapl-fc-$2" [ ! -e "/etc/aapl-fc-$2" ]
}

# F2: hats and child profiles that leave the ConfigMap are neutralised, never unloaded: the kernel unconfines the
# tasks of an unloaded profile. A task in the child profile and one in the hat stay confined (allowed nothing
# now, not even what the old child allowed), and a task that enters the parent and changes into the old hat
# does not get the hat's old rules.
scenario_F2() {
    echo "AAPL-BEGIN F2"
    cm_set /aapl/src/f2a
    run F2 copy-1 $COPY
    check F2 "copy with hat and child exits 0 (got $RC)" [ "$RC" -eq 0 ]
    run F2 load-1 $LOAD_RO
    check F2 "load with hat and child exits 0 (got $RC)" [ "$RC" -eq 0 ]
    check F2 "the kernel lists the hat" grep -q '^aapl-fc-p//wide (' "$PROFILES"
    check F2 "the kernel lists the child profile" grep -q '^aapl-fc-p//kid (' "$PROFILES"
    # controls: unconfined, and the old child and hat, may write /etc
    unconfined_task control; go control
    check F2 "control: an unconfined task may write /etc" [ -e /etc/aapl-fc-control ]
    under aapl-fc-p//kid kid0; go kid0
    check F2 "control: the old child profile allows its /etc write" [ -e /etc/aapl-fc-kid0 ]
    in_hat hat0; go hat0
    check F2 "control: the old hat allows its /etc write" [ -e /etc/aapl-fc-hat0 ]
    # tasks running under the child and in the hat while the ConfigMap changes
    under aapl-fc-p//kid kid
    in_hat hat
    expect_label F2 kid aapl-fc-p//kid
    expect_label F2 hat aapl-fc-p//wide
    cm_set /aapl/src/f2b
    run F2 copy-2 $COPY
    check F2 "copy without them exits 0 (got $RC)" [ "$RC" -eq 0 ]
    run F2 load-2 $LOAD_RO
    check F2 "load without them exits 0 (got $RC)" [ "$RC" -eq 0 ]
    check F2 "load says it neutralised 2" grep -q 'neutralised 2' "/tmp/err.F2.load-2"
    expect_label F2 kid aapl-fc-p//kid
    expect_label F2 hat aapl-fc-p//wide
    go kid
    go hat
    expect_write_denied F2 kid
    expect_write_denied F2 hat
    check F2 "the neutralised child allows nothing, not even its old /tmp write" [ ! -e /tmp/aapl-fc-kid ]
    # a new task enters the parent and tries to change into the old hat, then to write what the hat allowed
    rm -f /etc/aapl-fc-hat2
    run F2 enter-hat as-profile aapl-fc-p sh -c \
        'echo -n "changehat 4243^wide" >/proc/self/attr/current; echo "changehat: $?" >&2; echo x >/etc/aapl-fc-hat2'
    check F2 "the kernel refuses change_hat into the neutralised hat (not a hat any more)" \
        grep -q 'changehat: 1' /tmp/err.F2.enter-hat
    expect_write_denied F2 hat2
    check F2 "the parent stays, enforced" grep -qxF 'aapl-fc-p (enforce)' "$PROFILES"
    run F2 load-3 $LOAD_RO
    check F2 "a re-run exits 0 and reports them again (got $RC)" \
        sh -c "[ $RC -eq 0 ] && grep -q 'neutralised 2' /tmp/err.F2.load-3"
    info F2 "kernel: $(grep aapl-fc "$PROFILES" | tr '\n' ' ')"
    echo "AAPL-DONE F2"
}

# F3: a policy namespace passes the parser but could never be verified: refused up front, nothing loaded.
scenario_F3() {
    echo "AAPL-BEGIN F3"
    cm_set /aapl/src/f3
    run F3 copy $COPY
    check F3 "copy refuses a namespaced profile with exit 3 (got $RC)" [ "$RC" -eq 3 ]
    check F3 "the message says why" grep -q 'policy namespace' "/tmp/err.F3.copy"
    check F3 "nothing of it reached the kernel" sh -c "! grep -q 'aapl-ns' $PROFILES"
    echo "AAPL-DONE F3"
}

# sha1_of NAME: the kernel's hash of the policy a profile was loaded from
sha1_of() { cat "$SFS"/apparmor/policy/profiles/"$1".*/sha1 2>/dev/null | head -n 1; }

# F4: what load put in the kernel is what the node's own boot-style load of the same file puts there, for an
# unpinned node (kernel features) and for a pinned one (parser.conf policy-features=…). The profile has no abi
# rule, so the pin decides what it is compiled for (an abi rule would override the pin).
scenario_F4() {
    echo "AAPL-BEGIN F4"
    cm_set /aapl/src/f4
    run F4 copy $COPY
    check F4 "copy exits 0 (got $RC)" [ "$RC" -eq 0 ]
    for config in unpinned pinned; do
        if [ "$config" = pinned ]; then
            printf 'policy-features=/usr/share/apparmor-features/features\n' >/etc/apparmor/parser.conf
        else
            printf '# no pin: the running kernel decides\n' >/etc/apparmor/parser.conf
        fi
        # the node's own configuration, as the DaemonSet mounts it under --node-root
        run F4 "load-$config" env APPARMOR_LOADER_NODE_ROOT=/ $LOAD_RO
        check F4 "$config: load exits 0 (got $RC)" [ "$RC" -eq 0 ]
        ours=$(sha1_of aapl-fc-q)
        run F4 "host-$config" "$PARSER" --replace "$DEST/fc-q"
        host=$(sha1_of aapl-fc-q)
        info F4 "$config: load's policy sha1 $ours, the host-style load's $host"
        check F4 "$config: the kernel hashes of load's and the host's policy are equal and present" \
            [ -n "$ours" -a "$ours" = "$host" ]
        eval "hash_$config=\$ours"
    done
    check F4 "the pin changed the compiled policy ($hash_pinned vs $hash_unpinned), so it was honoured" \
        [ "$hash_pinned" != "$hash_unpinned" ]
    printf '# no pin\n' >/etc/apparmor/parser.conf
    echo "AAPL-DONE F4"
}

# F5: a profile that leaves the ConfigMap (aapl-fc-a) and one renamed in its key (aapl-fc-old -> aapl-fc-new) are
# retired, never unloaded: tasks running under them stay confined by their last policy. At the end, the node's
# state (profile directory, cache dir) is printed for the reboot of suite failclosed-reboot (F6).
scenario_F5() {
    echo "AAPL-BEGIN F5"
    cm_set /aapl/src/f5a
    run F5 copy-1 $COPY
    check F5 "copy exits 0 (got $RC)" [ "$RC" -eq 0 ]
    run F5 load-1 $LOAD_RO
    check F5 "load exits 0 (got $RC)" [ "$RC" -eq 0 ]
    under aapl-fc-a a
    under aapl-fc-old old
    expect_label F5 a aapl-fc-a
    expect_label F5 old aapl-fc-old
    cm_set /aapl/src/f5b
    run F5 copy-2 $COPY
    check F5 "copy exits 0 (got $RC)" [ "$RC" -eq 0 ]
    check F5 "the removed profile's file is gone, so the next boot does not load it" [ ! -e "$DEST/fc-a" ]
    run F5 load-2 $LOAD_RO
    check F5 "load exits 0 (got $RC)" [ "$RC" -eq 0 ]
    check F5 "load names both retired profiles" \
        sh -c "grep -q 'retired .*aapl-fc-a' /tmp/err.F5.load-2 && grep -q 'retired .*aapl-fc-old' /tmp/err.F5.load-2"
    check F5 "load complete counts them" grep -q 'retired 2' "/tmp/err.F5.load-2"
    check F5 "the renamed profile is loaded under its new name" grep -qxF 'aapl-fc-new (enforce)' "$PROFILES"
    expect_label F5 a aapl-fc-a
    expect_label F5 old aapl-fc-old
    go a
    go old
    expect_write_denied F5 a
    expect_write_denied F5 old
    check F5 "the retired profile keeps its last rules (its /tmp write is allowed)" [ -e /tmp/aapl-fc-a ]
    check F5 "the record keeps the retired names" grep -q 'aapl-fc-old' "$CACHE/loaded.json"
    # the node's disk, for the reboot
    (cd / && find "${DEST#/}" -maxdepth 1 -type f && find "${CACHE#/}" -type f) >/tmp/state.list
    run F5 state sh -c 'set -o pipefail; tar -c -C / $(cat /tmp/state.list) | gzip | base64'
    check F5 "the node's state was printed (exit $RC)" [ "$RC" -eq 0 ]
    echo "AAPL-DONE F5"
}

# F7: a profile named `unconfined` is refused by copy and validate with exit 3.
scenario_F7() {
    echo "AAPL-BEGIN F7"
    cat "$PROFILES" >/tmp/kernel.F7.before
    cm_set /aapl/src/f7
    run F7 copy $COPY
    check F7 "copy refuses a profile named unconfined with exit 3 (got $RC)" [ "$RC" -eq 3 ]
    check F7 "the message names the file and says why" \
        sh -c "grep -q 'unconfined' /tmp/err.F7.copy && grep -q 'no confinement' /tmp/err.F7.copy"
    run F7 validate "$LOADER" validate --parser "$PARSER" --base "$DEST" "$SRC/unconfined"
    check F7 "validate refuses it with exit 3 (got $RC)" [ "$RC" -eq 3 ]
    check F7 "the kernel's profile list is unchanged" same /tmp/kernel.F7.before "$PROFILES"
    echo "AAPL-DONE F7"
}

# F8: reboot parity. A node whose os-release (single-quoted, behind Ubuntu's relative link) says Ubuntu 22.04
# boots with AppArmor 3, which cannot read a 4.0-only profile: copy refuses it (exit 3) and writes nothing. With
# no os-release at all, copy refuses to guess (exit 1). Azure Linux 3 and an Ubuntu 22.04 derivative are
# AppArmor 3 too; a file recorded while the node was AppArmor 4 is checked once the node is AppArmor 3.
scenario_F8() {
    echo "AAPL-BEGIN F8"
    cp /host/usr/lib/os-release /tmp/os-release.saved
    printf "NAME='Ubuntu'\nID='ubuntu'\nVERSION_ID='22.04'\n" >/host/usr/lib/os-release
    snapshot_dest /tmp/dest.F8.before
    cm_set /aapl/src/f8
    run F8 copy $COPY
    check F8 "an Ubuntu 22.04 node refuses a 4.0-only profile with exit 3 (got $RC)" [ "$RC" -eq 3 ]
    check F8 "the message names the release and the AppArmor 3 parser" \
        sh -c "grep -q 'ubuntu 22.04' /tmp/err.F8.copy && grep -q 'AppArmor 3' /tmp/err.F8.copy"
    snapshot_dest /tmp/dest.F8.after
    check F8 "nothing was written" same /tmp/dest.F8.before /tmp/dest.F8.after
    rm /host/usr/lib/os-release
    run F8 copy-blind $COPY
    check F8 "without an os-release copy refuses to guess: exit 1 (got $RC)" [ "$RC" -eq 1 ]
    check F8 "the message names the file and the way out" \
        sh -c "grep -q 'etc/os-release' /tmp/err.F8.copy-blind && grep -q -- '--node-apparmor' /tmp/err.F8.copy-blind"
    # The other AppArmor 3 releases of the table: Azure Linux 3 (3.1) and an Ubuntu 22.04 derivative.
    printf 'ID=azurelinux\nVERSION_ID="3.0"\n' >/host/usr/lib/os-release
    run F8 copy-azl3 $COPY
    check F8 "an Azure Linux 3 node (AppArmor 3.1) refuses it too: exit 3 (got $RC)" [ "$RC" -eq 3 ]
    printf 'ID=pop\nID_LIKE="ubuntu debian"\nVERSION_ID="22.04"\nUBUNTU_CODENAME=jammy\n' >/host/usr/lib/os-release
    run F8 copy-jammy-like $COPY
    check F8 "an Ubuntu 22.04 derivative (ID_LIKE=ubuntu, jammy) refuses it too: exit 3 (got $RC)" [ "$RC" -eq 3 ]
    cp /tmp/os-release.saved /host/usr/lib/os-release
    run F8 copy-4 $COPY
    check F8 "the same profile on a Debian 13 node (AppArmor 4) is accepted (exit $RC)" [ "$RC" -eq 0 ]
    # The node is found to be AppArmor 3 only now (its os-release changed, or was read wrong
    # before): the file recorded under AppArmor 4 is checked too, not skipped as known.
    printf "NAME='Ubuntu'\nID='ubuntu'\nVERSION_ID='22.04'\n" >/host/usr/lib/os-release
    run F8 copy-again-as-3 $COPY
    check F8 "a file recorded on AppArmor 4 is checked when the node is AppArmor 3: exit 3 (got $RC)" [ "$RC" -eq 3 ]
    check F8 "it is refused for what the AppArmor 3 parser says of it, not for a file it could not find" \
        sh -c "grep -q 'AppArmor 3' /tmp/err.F8.copy-again-as-3 && ! grep -q 'not found' /tmp/err.F8.copy-again-as-3"
    cp /tmp/os-release.saved /host/usr/lib/os-release
    echo "AAPL-DONE F8"
}

# F6 (second boot): the node rebooted. Its disk (F5's state) is back, the node's boot loaded the top-level files
# of /etc/apparmor.d as apparmor.service does, then copy and load run again with the same ConfigMap.
scenario_F6() {
    echo "AAPL-BEGIN F6"
    base64 -d /aapl/state.b64 | gunzip | tar -x -C /
    check F6 "the node's disk is restored" [ -s "$CACHE/loaded.json" ]
    check F6 "before: the record lists the retired profiles" grep -q 'aapl-fc-old' "$CACHE/loaded.json"
    for f in "$DEST"/*; do
        [ -f "$f" ] || continue
        run F6 "boot-$(basename "$f")" "$PARSER" --replace --base "$DEST" "$f"
    done
    check F6 "the boot loaded what the ConfigMap has" grep -qxF 'aapl-fc-new (enforce)' "$PROFILES"
    check F6 "the removed profile is gone after the reboot" sh -c "! grep -q '^aapl-fc-a (' $PROFILES"
    check F6 "the old name of the renamed one too" sh -c "! grep -q '^aapl-fc-old (' $PROFILES"
    check F6 "the neutralised children too" sh -c "! grep -q '^aapl-fc-p//' $PROFILES"
    # After the reboot an administrator loads a profile of a retired name, from the very text we retired (so
    # the same policy hash): only the boot id tells it is not what we retired.
    run F6 admin "$PARSER" --replace --base "$DEST" /aapl/src/f5a/fc-a
    check F6 "the administrator's aapl-fc-a is loaded (exit $RC)" grep -qxF 'aapl-fc-a (enforce)' "$PROFILES"
    admin_sha1=$(sha1_of aapl-fc-a)
    info F6 "the administrator's aapl-fc-a hashes $admin_sha1; the record: $(grep -A1 '"aapl-fc-a"' "$CACHE/loaded.json" | tr -d ' \n')"
    check F6 "its policy hash is the one we retired ($admin_sha1): only the boot id tells them apart" \
        grep -q "\"aapl-fc-a\": \"$admin_sha1\"" "$CACHE/loaded.json"
    cm_set /aapl/src/f5b
    run F6 copy $COPY
    check F6 "copy exits 0 (got $RC)" [ "$RC" -eq 0 ]
    run F6 load $LOAD_RO
    check F6 "load exits 0 (got $RC)" [ "$RC" -eq 0 ]
    check F6 "load says the retired names left the record" grep -q 'dropped from the record' "/tmp/err.F6.load"
    check F6 "load says the administrator's aapl-fc-a is not ours" grep -q 'aapl-fc-a.*not provably the policy we' "/tmp/err.F6.load"
    check F6 "load complete: retired 0, neutralised 0" grep -q 'retired 0, neutralised 0' "/tmp/err.F6.load"
    check F6 "the record no longer lists them" \
        sh -c "! grep -q -e aapl-fc-old -e '\"aapl-fc-a\"' -e 'aapl-fc-p//' $CACHE/loaded.json"
    # A ConfigMap that brings the name back does not replace the administrator's profile.
    cm_set /aapl/src/f5a
    run F6 copy-back $COPY
    check F6 "copy refuses to claim the administrator's aapl-fc-a: exit 3 (got $RC)" [ "$RC" -eq 3 ]
    check F6 "copy names it and the way to adopt it" grep -q 'aapl-fc-a.*--adopt-loaded' "/tmp/err.F6.copy-back"
    check F6 "the kernel keeps the administrator's aapl-fc-a" grep -qxF 'aapl-fc-a (enforce)' "$PROFILES"
    echo "AAPL-DONE F6"
}

# policy_sha1 NAME: the kernel's hash of the policy of NAME, a profile or a child at any depth, found by its
# `name` files (securityfs mangles the directory names; a child's `name` holds its own name only, below its
# parent's `profiles/`)
policy_sha1() {
    find "$SFS/apparmor/policy/profiles" -name name | while IFS= read -r f; do
        d=${f%/name}
        full=$(cat "$f")
        up=${d%/profiles/*}
        while [ -f "$up/name" ]; do
            full="$(cat "$up/name")//$full"
            up=${up%/profiles/*}
        done
        if [ "$full" = "$1" ]; then cat "$d/sha1"; break; fi
    done
}

# F9: a hat whose name holds a backslash (`a\b`) and a child named `k\\d` leave the ConfigMap: each is replaced
# by its stub under exactly its own name, proven by the kernel's policy hash; nothing is loaded under another
# name, change_hat into the old hat is refused, and a re-run adds nothing.
scenario_F9() {
    echo "AAPL-BEGIN F9"
    cm_set /aapl/src/f9a
    run F9 copy-1 $COPY
    check F9 "copy with the odd names exits 0 (got $RC)" [ "$RC" -eq 0 ]
    run F9 load-1 $LOAD_RO
    check F9 "load with the odd names exits 0 (got $RC)" [ "$RC" -eq 0 ]
    check F9 "the kernel lists the hat a\\b" grep -qxF 'aapl-fc-b//a\b (enforce)' "$PROFILES"
    check F9 "the kernel lists the child k\\\\d" grep -qxF 'aapl-fc-b//k\\d (enforce)' "$PROFILES"
    hat_before=$(policy_sha1 'aapl-fc-b//a\b')
    kid_before=$(policy_sha1 'aapl-fc-b//k\\d')
    run F9 enter-before as-profile aapl-fc-b sh -c 'printf "changehat 4244^%s" "a\b" >/proc/self/attr/current; echo "changehat: $?" >&2'
    check F9 "control: change_hat into the hat a\\b works before" grep -q 'changehat: 0' /tmp/err.F9.enter-before
    cm_set /aapl/src/f9b
    run F9 copy-2 $COPY
    check F9 "copy without them exits 0 (got $RC)" [ "$RC" -eq 0 ]
    run F9 load-2 $LOAD_RO
    check F9 "load without them exits 0 (got $RC)" [ "$RC" -eq 0 ]
    check F9 "load says it neutralised 2" grep -q 'neutralised 2' /tmp/err.F9.load-2
    hat_after=$(policy_sha1 'aapl-fc-b//a\b')
    kid_after=$(policy_sha1 'aapl-fc-b//k\\d')
    info F9 "hat a\\b: $hat_before -> $hat_after; child k\\\\d: $kid_before -> $kid_after"
    check F9 "the hat's policy is not its old one any more" [ -n "$hat_after" -a "$hat_after" != "$hat_before" ]
    check F9 "the child's policy is not its old one any more" [ -n "$kid_after" -a "$kid_after" != "$kid_before" ]
    check F9 "the record keeps the kernel's hash of each stub" \
        sh -c "grep -q '$hat_after' $CACHE/loaded.json && grep -q '$kid_after' $CACHE/loaded.json"
    check F9 "nothing was loaded under another name (2 children, as before)" \
        [ "$(grep -c '^aapl-fc-b//' "$PROFILES")" -eq 2 ]
    run F9 enter-after as-profile aapl-fc-b sh -c 'printf "changehat 4245^%s" "a\b" >/proc/self/attr/current; echo "changehat: $?" >&2'
    check F9 "change_hat into the neutralised hat is refused" grep -q 'changehat: 1' /tmp/err.F9.enter-after
    run F9 load-3 $LOAD_RO
    check F9 "a re-run exits 0 and reports them again (got $RC)" \
        sh -c "[ $RC -eq 0 ] && grep -q 'neutralised 2' /tmp/err.F9.load-3"
    check F9 "a re-run adds no child" [ "$(grep -c '^aapl-fc-b//' "$PROFILES")" -eq 2 ]
    check F9 "a re-run leaves the stubs as they were" [ "$(policy_sha1 'aapl-fc-b//a\b')" = "$hat_after" ]
    info F9 "kernel: $(grep aapl-fc-b "$PROFILES" | tr '\n' ' ')"
    echo "AAPL-DONE F9"
}

# F10: a profile with a hat and a child profile (neutralised earlier) leaves the ConfigMap and is retired with its
# whole family; a rollback brings it back, hat and child included, on the same node without --adopt-loaded.
scenario_F10() {
    echo "AAPL-BEGIN F10"
    cm_set /aapl/src/f10a
    run F10 copy-1 $COPY
    check F10 "copy with hat and child exits 0 (got $RC)" [ "$RC" -eq 0 ]
    run F10 load-1 $LOAD_RO
    check F10 "load exits 0 (got $RC)" [ "$RC" -eq 0 ]
    cm_set /aapl/src/f10b
    run F10 copy-2 $COPY
    run F10 load-2 $LOAD_RO
    check F10 "without its child: load exits 0 and neutralises it (got $RC)" \
        sh -c "[ $RC -eq 0 ] && grep -q 'neutralised .*aapl-fc-r//kid' /tmp/err.F10.load-2"
    cm_set /aapl/src/f10c
    run F10 copy-3 $COPY
    run F10 load-3 $LOAD_RO
    check F10 "without the profile: load exits 0 and retires it (got $RC)" \
        sh -c "[ $RC -eq 0 ] && grep -q 'retired .*aapl-fc-r' /tmp/err.F10.load-3"
    check F10 "the retired family stays in the kernel" \
        sh -c "grep -q '^aapl-fc-r (' $PROFILES && grep -q '^aapl-fc-r//h (' $PROFILES && grep -q '^aapl-fc-r//kid (' $PROFILES"
    cm_set /aapl/src/f10a
    run F10 copy-4 $COPY
    check F10 "the rollback's copy exits 0 (got $RC)" [ "$RC" -eq 0 ]
    run F10 load-4 $LOAD_RO
    check F10 "the rollback's load exits 0 (got $RC)" [ "$RC" -eq 0 ]
    check F10 "the profile, its hat and its child are loaded again" \
        sh -c "grep -qxF 'aapl-fc-r (enforce)' $PROFILES && grep -qxF 'aapl-fc-r//h (enforce)' $PROFILES && grep -qxF 'aapl-fc-r//kid (enforce)' $PROFILES"
    run F10 enter-hat as-profile aapl-fc-r sh -c 'printf "changehat 4246^h" >/proc/self/attr/current; echo "changehat: $?" >&2'
    check F10 "the hat is a hat again" grep -q 'changehat: 0' /tmp/err.F10.enter-hat
    echo "AAPL-DONE F10"
}

suite_failclosed() {
    scenario_F1
    scenario_F2
    scenario_F3
    scenario_F5
    scenario_F7
    scenario_F8
    scenario_F4
    scenario_F9
    scenario_F10
}

suite_failclosed_reboot() {
    scenario_F6
}
