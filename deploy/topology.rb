# frozen_string_literal: true

# The deployment plan: deploy/hosts (names, addresses, ids) plus the
# operator's choices from the environment (NODES, ROOTS, VM_MEMORY, ...)
# give one entry per VM, with the environment its provisioning script gets.
#
# The Vagrantfile requires this file. tests/netns.rs runs it
# (`ruby deploy/topology.rb json`) so that its namespaces get exactly the
# addresses and the environment Vagrant gives each VM. For a shell:
# `ruby deploy/topology.rb env node3` prints node3's variables.

require "json"

module Treecache
  # One machine of the plan.
  Vm = Struct.new(:name, :ip, :id, :role, :autostart, :memory, :cpus, :env, keyword_init: true) do
    def to_h
      super.transform_keys(&:to_s)
    end
  end

  # deploy/hosts read and checked, and the VMs it gives for an environment.
  class Topology
    HOSTS = File.join(__dir__, "hosts")
    DEFAULT_NODES = 4
    DEFAULT_BOX = "bento/debian-12"
    # Node flags an operator may set for every node from the host, e.g.
    # `TREECACHE_MODE=ttl TREECACHE_MAX_AGE=2s vagrant up`.
    PASS_THROUGH = %w[
      TREECACHE_FANOUT TREECACHE_MODE TREECACHE_MAX_AGE TREECACHE_FSYNC TREECACHE_DATA_DIR
      TREECACHE_MAX_MEMORY TREECACHE_MAX_VALUE_BYTES TREECACHE_API_TOKEN TREECACHE_LOG_FORMAT
      TREECACHE_MAX_CONNECTIONS TREECACHE_MAX_UPSTREAM_REQUESTS RUST_LOG
    ].freeze

    attr_reader :settings, :rows, :env

    def self.load(env = ENV, path = HOSTS)
      new(File.read(path), env, path)
    end

    def initialize(text, env, path = HOSTS)
      @env = env
      @settings = {}
      @rows = []
      text.each_line.with_index(1) do |line, n|
        fields = line.sub(/#.*/, "").split
        next if fields.empty?

        if fields[0] == "set" && fields.size == 3
          @settings[fields[1]] = fields[2]
        elsif fields[0] == "vm" && fields.size == 5
          _, name, ip, id, role = fields
          @rows << { name: name, ip: ip, id: (id == "-" ? nil : Integer(id, 10)), role: role }
        else
          raise ArgumentError, "#{path}:#{n}: expected `set NAME VALUE` or `vm NAME ADDRESS ID ROLE`: #{line.strip}"
        end
      end
      check!
    end

    def cluster
      settings.fetch("cluster")
    end
    def zk_port
      Integer(settings.fetch("zk_port"))
    end
    def http_port
      Integer(settings.fetch("http_port"))
    end
    def box
      env.fetch("BOX", DEFAULT_BOX)
    end
    def zk_row
      rows.find { |r| r[:role] == "zookeeper" }
    end
    def root_rows
      rows.select { |r| r[:role] == "root" }
    end
    def node_rows
      rows.select { |r| r[:role] == "node" }
    end
    def zk_address
      "#{zk_row[:ip]}:#{zk_port}"
    end
    # ZooKeeper's secure client port (TREECACHE_TLS=1).
    def zk_tls_port
      Integer(settings.fetch("zk_tls_port", "2281"))
    end
    # TREECACHE_TLS=1: HTTPS between nodes, ZooKeeper over TLS, a CA made
    # by the zk VM (provision/lib.sh).
    def tls?
      %w[1 true yes on].include?(env.fetch("TREECACHE_TLS", "").strip.downcase)
    end
    def url(row)
      "#{tls? ? 'https' : 'http'}://#{row[:ip]}:#{http_port}"
    end

    # How many nodes `vagrant up` starts (NODES, default 4, at most the rows).
    def nodes
      count_from("NODES", DEFAULT_NODES, 1, node_rows.size)
    end

    # How many root candidates start (ROOTS, 1 or 2).
    def roots
      count_from("ROOTS", 1, 1, root_rows.size)
    end

    # The VMs Vagrant defines, in the order it brings them up: ZooKeeper
    # (which also builds treecache), the root candidates, the nodes. `vagrant
    # up` starts the first ROOTS roots and NODES nodes (autostart). Defined
    # too, so that `vagrant up NAME` works: every node already created, and
    # one spare after them (node5 after a default `vagrant up`).
    def vms
      defined = [nodes, node_rows.rindex { |r| created.include?(r[:name]) }.to_i + 1].max + 1
      [vm(zk_row, true, "ZK", zk_env)] +
        root_rows.each_with_index.map { |r, i| vm(r, i < roots, "VM", node_env(r, root: true)) } +
        node_rows.first(defined).each_with_index.map { |r, i| vm(r, i < nodes, "VM", node_env(r, root: false)) }
    end

    # Names of the machines Vagrant has created (its .vagrant/machines/NAME/PROVIDER/id).
    def created
      @created ||= begin
        dotfile = File.expand_path(env.fetch("VAGRANT_DOTFILE_PATH", ".vagrant"), File.dirname(__dir__))
        Dir.glob(File.join(dotfile, "machines", "*", "*", "id")).map { |f| f.split(File::SEPARATOR)[-3] }.uniq
      end
    end

    def to_json(*args)
      {
        "settings" => settings, "nodes" => nodes, "roots" => roots, "box" => box,
        "vms" => vms.map(&:to_h)
      }.to_json(*args)
    end

    private

    def vm(row, autostart, size, env)
      Vm.new(name: row[:name], ip: row[:ip], id: row[:id], role: row[:role], autostart: autostart,
             memory: size_from("#{size}_MEMORY", size == "ZK" ? 2048 : 512, 256),
             cpus: size_from("#{size}_CPUS", size == "ZK" ? 2 : 1, 1), env: env)
    end

    # provision/zookeeper.sh's variables. Under TLS the plain port serves
    # the zk VM's own loopback only (zkCli.sh there); the nodes use the
    # secure port on the private network.
    def zk_env
      return { "ZOOKEEPER_LISTEN" => zk_address } unless tls?

      { "ZOOKEEPER_LISTEN" => "127.0.0.1:#{zk_port}", "ZOOKEEPER_TLS_LISTEN" => "#{zk_row[:ip]}:#{zk_tls_port}" }
    end

    # The variables `treecache node` reads (src/config.rs), as this VM needs them.
    def node_env(row, root:)
      e = {
        "TREECACHE_ZK" => tls? ? "#{zk_row[:ip]}:#{zk_tls_port}" : zk_address,
        "TREECACHE_CLUSTER" => cluster,
        "TREECACHE_LISTEN" => "#{row[:ip]}:#{http_port}",
        "TREECACHE_ADVERTISE" => url(row),
        "TREECACHE_ID" => row[:id].to_s,
        "TREECACHE_FANOUT" => settings.fetch("fanout")
      }
      if root
        e["TREECACHE_ROOT"] = "true"
      elsif roots == 1
        # With one root its address is fixed. With candidates, nodes follow
        # the election through ZooKeeper's root znode instead.
        e["TREECACHE_ROOT_URL"] = url(root_rows.first)
      end
      if tls?
        # provision/treecache.sh makes the certificate; the node gets the files.
        e.merge!("TREECACHE_TLS" => "1", "TREECACHE_TLS_NAME" => row[:name], "TREECACHE_ZK_TLS" => "true")
        e["TREECACHE_TLS_CLIENT_AUTH"] = env["TREECACHE_TLS_CLIENT_AUTH"] if env["TREECACHE_TLS_CLIENT_AUTH"]
      end
      PASS_THROUGH.each { |k| e[k] = env[k] if env[k] && !env[k].empty? }
      # The root keeps every key: it refuses a memory bound.
      e.delete("TREECACHE_MAX_MEMORY") if root
      e
    end

    def count_from(var, default, min, max)
      raw = env.fetch(var, "").strip
      return default if raw.empty?

      n = Integer(raw, 10, exception: false)
      return n if n && n >= min && n <= max

      raise ArgumentError, "#{var}=#{raw}: must be a whole number from #{min} to #{max} " \
                           "(deploy/hosts defines #{max})"
    end

    def size_from(var, default, min)
      raw = env.fetch(var, "").strip
      return default if raw.empty?

      n = Integer(raw, 10, exception: false)
      return n if n && n >= min

      raise ArgumentError, "#{var}=#{raw}: must be a whole number, at least #{min}"
    end

    def check!
      %w[cluster subnet laptop zk_port http_port fanout].each do |k|
        raise ArgumentError, "#{HOSTS}: `set #{k} ...` is missing" unless settings.key?(k)
      end
      raise ArgumentError, "#{HOSTS}: exactly one zookeeper row" unless rows.count { |r| r[:role] == "zookeeper" } == 1
      raise ArgumentError, "#{HOSTS}: at least one root row" if root_rows.empty?
      raise ArgumentError, "#{HOSTS}: at least one node row" if node_rows.empty?
      %i[name ip id].each do |k|
        dup = rows.map { |r| r[k] }.compact.group_by(&:itself).find { |_, same| same.size > 1 }
        raise ArgumentError, "#{HOSTS}: #{k} #{dup[0]} appears twice" if dup
      end
      bad = rows.find { |r| r[:role] != "zookeeper" && (r[:id].nil? || r[:id] < 1) }
      raise ArgumentError, "#{HOSTS}: #{bad[:name]} needs an id of 1 or more" if bad
    end
  end
end

if $PROGRAM_NAME == __FILE__
  begin
    plan = Treecache::Topology.load
    if ARGV == ["json"]
      puts JSON.pretty_generate(JSON.parse(plan.to_json))
    elsif ARGV.size == 2 && ARGV[0] == "env"
      vm = plan.vms.find { |v| v.name == ARGV[1] }
      abort("no VM named #{ARGV[1]} in #{Treecache::Topology::HOSTS}") unless vm
      vm.env.each { |k, v| puts "#{k}=#{v}" }
    else
      abort("usage: ruby deploy/topology.rb json | env NAME")
    end
  rescue ArgumentError, KeyError => e
    abort("deploy/topology.rb: #{e.message}")
  end
end
