# bash completion for lmctfy and lmctl: commands, flags, and container names
# (from `lmctfy -v list containers -r /`, or the same through lmctl with the
# connection options on the line). Installed by `tools/setup --install` as
# share/bash-completion/completions/lmctfy and .../lmctl; or source it.
# The command table below must match the CLI's: the tests (CompletionTests)
# compare them, and compgen's answers, with the real dispatcher.

# Menus and the words below them ("_" is the top).
declare -gA _lmctfy_menus=(
    [_]="create destroy detect enter image init killall list notify pause resume run spec stats update"
    [image]="export import list remove"
    [list]="containers pids tids"
    [notify]="container memory"
    ["notify container"]="empty"
    ["notify memory"]="oom threshold"
    [stats]="summary full"
    [update]="diff replace"
)
# Verbs whose first argument is a container name (the image verbs take
# image names and archive files: see the end of _lmctfy_complete).
_lmctfy_named=" create destroy enter killall list_containers list_pids list_tids notify_container_empty notify_memory_oom notify_memory_threshold pause resume run spec stats_summary stats_full update_diff update_replace "
_lmctfy_flags="-b -c -f -r -n -p -v -l -o -h -V --help --version --lmctfy_binary --lmctfy_config= --lmctfy_force --lmctfy_recursive --lmctfy_no_wait --lmctfy_output_style= --lmctfy_print_help --lmctfy_version --lmctfy_version_long --lmctfy_output_fd= --lmctfy_print_cmd_tree --lmctfy_print_cmd_tree_long --create= --rm --tier= -i --stdin -t --tty -it"
_lmctfy_styles="pairs values long json"

# lmctl: its own options (before the verb), its own verbs and their flags.
_lmctl_options="--agent --controller --key-file --cert --key --ca --host --hosts --timeout"
_lmctl_verbs="info events top hosts snapshot migrate checkpoint restore"
declare -gA _lmctl_verb_flags=(
    [events]="-f --follow --after --kind -r --recursive -o --host --hosts"
    [top]="--once -r --sort"
    [hosts]="-o --remove"
    ["snapshot export"]="-o --text"
    ["snapshot import"]="--name --start"
    [migrate]="--to --to-key-file --from --timeout --force"
    [checkpoint]="--leave-running"
    [restore]="--name"
    [info]="-o"
)
_lmctl_event_kinds="OOM MEMORY_THRESHOLD EMPTY FREEZER CREATED UPDATED DESTROYED PROCESS_EXITED STATS MEMORY_PRESSURE HOST_GAP EVICTED"
# lmctl create's policy flags (PolicyCommands), besides lmctfy's.
_lmctl_create_flags="--tier --dry-run --anywhere"

# Image names, one per line, from the CLI itself ($1...: the command and its
# connection options), at most 2 s.
_lmctfy_image_names() {
    timeout 2 "$@" -v image list 2>/dev/null
}

# The tiers of the agent's policy (lmctl info prints committed_TIER="..."),
# at most 2 s.
_lmctl_tiers() {
    timeout 2 "$@" info 2>/dev/null | sed -n 's/^committed_\([^=]*\)=.*/\1/p' | grep -vx memory
}

# Container names, one per line, from the CLI itself ($1...: the command
# and its connection options). At most 2 s: a missing agent must not hang
# the shell.
_lmctfy_container_names() {
    timeout 2 "$@" -v list containers -r / 2>/dev/null
    echo /
}

_lmctfy_complete() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    local prog=${COMP_WORDS[0]} lmctl=0
    [[ ${prog##*/} == lmctl ]] && lmctl=1
    local -a conn=()          # lmctl's connection options, for listing names
    local menu="" leaf="" positional=0 i w ownverb=""
    COMPREPLY=()

    # Walk the words before the cursor: lmctl's options, flags, the command
    # words down the menus, then the verb's positional arguments.
    i=1
    while (( i < COMP_CWORD )); do
        w=${COMP_WORDS[i]}
        if (( lmctl )) && [[ -z $menu && -z $leaf && -z $ownverb && " $_lmctl_options " == *" ${w%%=*} "* ]]; then
            [[ $w == *=* ]] && conn+=("$w") || { conn+=("$w" "${COMP_WORDS[i+1]}"); ((i++)); }
        elif [[ $w == -c || $w == -o || $w == --lmctfy_config || $w == --lmctfy_output_style ]] && (( positional == 0 )); then
            ((i++))
        elif [[ $w == --* && -n $ownverb ]]; then
            case $w in --after|--kind|--sort|--name|--to|--to-key-file|--from|--timeout|--host|--hosts|--remove) ((i++)) ;; esac
        elif (( lmctl )) && [[ $leaf == create && $w == --tier ]] && (( positional == 0 )); then
            ((i++))
        elif [[ $w == -* ]] && (( positional == 0 )); then
            :
        elif [[ $ownverb == snapshot ]]; then
            # (Before the positional count: `snapshot export` is the verb.)
            ownverb="snapshot $w"
        elif [[ -n $leaf || -n $ownverb ]]; then
            ((positional++))
        elif (( lmctl )) && [[ -z $menu && " $_lmctl_verbs " == *" $w "* ]]; then
            ownverb=$w
        else
            local next=${menu:+$menu }$w
            if [[ -n ${_lmctfy_menus[$next]+set} ]]; then
                menu=$next
            elif [[ " ${_lmctfy_menus[${menu:-_}]} " == *" $w "* ]]; then
                leaf=$next
            else
                return    # an unknown word: nothing sensible to offer
            fi
        fi
        ((i++))
    done
    # Values of the flags that take one.
    case $prev in
        -o|--lmctfy_output_style)
            case $ownverb in
                "snapshot export") COMPREPLY=($(compgen -f -- "$cur")) ;;
                events|hosts|info) COMPREPLY=($(compgen -W "json text" -- "$cur")) ;;
                *) COMPREPLY=($(compgen -W "$_lmctfy_styles" -- "$cur")) ;;
            esac
            return ;;
        -c|--lmctfy_config|--key-file|--cert|--key|--ca|--to-key-file)
            COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --kind)
            COMPREPLY=($(compgen -W "$_lmctl_event_kinds" -- "$cur")); return ;;
        --sort)
            COMPREPLY=($(compgen -W "cpu mem procs name" -- "$cur")); return ;;
        --agent|--controller|--to)
            COMPREPLY=($(compgen -W "unix:// tcp://" -- "$cur")); return ;;
        --host|--from)
            # The controller's hosts (`hosts` prints name="..." first), over
            # the connection options on the line but --host/--hosts.
            local -a ctl=()
            local j=0
            while (( j < ${#conn[@]} )); do
                case ${conn[j]} in
                    --host|--hosts) ((j++)) ;;
                    --host=*|--hosts=*) ;;
                    *) ctl+=("${conn[j]}") ;;
                esac
                ((j++))
            done
            local hosts
            hosts=$(timeout 2 "$prog" "${ctl[@]}" hosts 2>/dev/null | sed -n 's/^name="\([^"]*\)".*/\1/p')
            COMPREPLY=($(compgen -W "$hosts" -- "$cur")); return ;;
        --tier)
            if (( lmctl )) && [[ $leaf == create ]]; then
                COMPREPLY=($(compgen -W "$(_lmctl_tiers "$prog" "${conn[@]}")" -- "$cur"))
                return
            fi ;;
        --hosts|--after|--name) return ;;
    esac

    if [[ $ownverb == snapshot ]]; then
        COMPREPLY=($(compgen -W "export import" -- "$cur")); return
    fi

    if [[ $cur == -* ]]; then
        if [[ -n $ownverb ]]; then
            COMPREPLY=($(compgen -W "${_lmctl_verb_flags[$ownverb]}" -- "$cur"))
        elif (( lmctl )) && [[ -z $menu && -z $leaf ]]; then
            COMPREPLY=($(compgen -W "$_lmctl_options $_lmctfy_flags" -- "$cur"))
        elif (( lmctl )) && [[ $leaf == create ]]; then
            COMPREPLY=($(compgen -W "$_lmctl_create_flags $_lmctfy_flags" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "$_lmctfy_flags" -- "$cur"))
        fi
        [[ ${COMPREPLY[0]} == *= ]] && compopt -o nospace 2>/dev/null
        return
    fi

    local named=0
    if [[ -n $ownverb ]]; then
        case $ownverb in events|top|migrate|checkpoint|"snapshot export") named=1 ;;
            "snapshot import"|restore) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        esac
    elif [[ -n $leaf ]]; then
        [[ $_lmctfy_named == *" ${leaf// /_} "* ]] && named=1
    else
        local words=${_lmctfy_menus[${menu:-_}]}
        [[ -z $menu ]] && words+=" help"
        (( lmctl )) && [[ -z $menu ]] && words+=" $_lmctl_verbs"
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
        return
    fi
    if (( named && positional == 0 )); then
        local names
        names=$(_lmctfy_container_names "$prog" "${conn[@]}")
        COMPREPLY=($(compgen -W "$names" -- "$cur"))
    elif [[ $leaf == run ]] && (( positional == 1 )); then
        COMPREPLY=($(compgen -c -- "$cur"))
    elif [[ ( $leaf == "image export" || $leaf == "image remove" ) ]] && (( positional == 0 )); then
        COMPREPLY=($(compgen -W "$(_lmctfy_image_names "$prog" "${conn[@]}")" -- "$cur"))
    elif [[ ( $leaf == "image import" && positional -eq 0 ) || ( $leaf == "image export" && positional -eq 1 ) ]]; then
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}

complete -F _lmctfy_complete lmctfy lmctl
