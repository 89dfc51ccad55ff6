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

# F2: hats and child profiles that leave the ConfigMap leave the kernel (the kernel keeps them across a replace).
scenario_F2() {
    echo "AAPL-BEGIN F2"
    cm_set /aapl/src/f2a
    run F2 copy-1 $COPY
    check F2 "copy with hat and child exits 0 (got $RC)" [ "$RC" -eq 0 ]
    run F2 load-1 $LOAD_RO
    check F2 "load with hat and child exits 0 (got $RC)" [ "$RC" -eq 0 ]
    check F2 "the kernel lists the hat" grep -q '^aapl-fc-p//wide (' "$PROFILES"
    check F2 "the kernel lists the child profile" grep -q '^aapl-fc-p//kid (' "$PROFILES"
    cm_set /aapl/src/f2b
    run F2 copy-2 $COPY
    check F2 "copy without them exits 0 (got $RC)" [ "$RC" -eq 0 ]
    run F2 load-2 $LOAD_RO
    check F2 "load without them exits 0 (got $RC)" [ "$RC" -eq 0 ]
    check F2 "load says it removed 2" grep -q 'removed 2' "/tmp/err.F2.load-2"
    check F2 "the hat is gone from the kernel" sh -c "! grep -q '^aapl-fc-p//wide (' $PROFILES"
    check F2 "the child profile is gone from the kernel" sh -c "! grep -q '^aapl-fc-p//kid (' $PROFILES"
    check F2 "the parent stays, enforced" grep -qxF 'aapl-fc-p (enforce)' "$PROFILES"
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

suite_failclosed() {
    scenario_F1
    scenario_F2
    scenario_F3
    scenario_F4
}
