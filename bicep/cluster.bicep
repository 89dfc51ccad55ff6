// Example AKS cluster for apparmor-profile-loader.
//
//  - System pool: tainted CriticalAddonsOnly=true:NoSchedule (the only custom taint AKS
//    allows on System pools), so ordinary workloads never land there.
//  - User pool: every new node starts with the gate taint as a *node initialization
//    taint*. AKS puts it on the node at creation and never reconciles it, so the loader's
//    `untaint` may remove it through the Kubernetes API once the profiles are loaded
//    (a `nodeTaints` taint is reconciled by AKS and cannot be removed that way). With the
//    cluster autoscaler on, the key carries the startup-taint.cluster-autoscaler.kubernetes.io/
//    prefix, or the autoscaler would never add nodes for pods that do not tolerate it
//    (Azure/AKS#3276).
//
// nodeInitializationTaints exists only in preview API versions and only in the cluster's
// agentPoolProfiles (agent-pool-level requests that carry it are rejected). Register the
// preview feature first:
//   az feature register --namespace Microsoft.ContainerService --name NodeInitializationTaintsPreview
//   az feature show --namespace Microsoft.ContainerService --name NodeInitializationTaintsPreview
//   az provider register --namespace Microsoft.ContainerService
// arm/cluster.json is the same template in ARM JSON (tests/deploy/compare_bicep_arm.py
// keeps them in step).

targetScope = 'resourceGroup'

@description('Name of the AKS cluster (also its DNS prefix).')
@minLength(1)
@maxLength(63)
param clusterName string = 'aks-apparmor'

@description('Azure region of the cluster. Defaults to the region of the resource group.')
param location string = resourceGroup().location

@description('Kubernetes version, e.g. 1.33. Empty: the AKS default. The loader needs 1.30 or newer.')
param kubernetesVersion string = ''

@description('Availability zones for both pools, e.g. ["1", "2", "3"]. Empty: no zones (for regions without them).')
param availabilityZones array = []

@description('Microsoft Entra group object IDs that get the cluster-admin role (Azure RBAC for Kubernetes).')
param adminGroupObjectIDs array = []

@description('CIDR ranges allowed to reach the API server, e.g. ["203.0.113.0/24"]. Empty: unrestricted (restrict it, or make the cluster private, for real use).')
param apiServerAuthorizedIPRanges array = []

@description('VM size of the System pool nodes (needs a temp disk large enough for an ephemeral OS disk).')
param systemPoolVmSize string = 'Standard_D4ds_v5'

@description('Number of System pool nodes.')
@minValue(1)
@maxValue(100)
param systemPoolCount int = 2

@description('VM size of the User pool nodes (needs a temp disk large enough for an ephemeral OS disk).')
param userPoolVmSize string = 'Standard_D4ds_v5'

@description('OS SKU of the User pool. AppArmor profiles are loaded on Ubuntu nodes; Azure Linux enforces SELinux instead.')
@allowed([
  'Ubuntu'
  'Ubuntu2204'
  'Ubuntu2404'
])
param userPoolOsSku string = 'Ubuntu'

@description('Run the cluster autoscaler on the User pool. Selects the startup-taint form of the gate taint.')
param userPoolEnableAutoScaling bool = true

@description('Initial number of User pool nodes (the fixed size when autoscaling is off).')
@minValue(0)
@maxValue(1000)
param userPoolCount int = 2

@description('Minimum number of User pool nodes when autoscaling.')
@minValue(0)
@maxValue(1000)
param userPoolMinCount int = 1

@description('Maximum number of User pool nodes when autoscaling.')
@minValue(1)
@maxValue(1000)
param userPoolMaxCount int = 5

// The gate taint the loader removes once the node's profiles are loaded. The cluster
// autoscaler treats keys with this prefix as startup taints (it still scales up for pods
// that do not tolerate them); on fixed-size pools the plain key is enough.
var gateTaint = userPoolEnableAutoScaling ? 'startup-taint.cluster-autoscaler.kubernetes.io/WaitingForAppArmorProfiles=true:NoSchedule' : 'WaitingForAppArmorProfiles=true:NoSchedule'

resource cluster 'Microsoft.ContainerService/managedClusters@2026-08-02-preview' = {
  // Intentional exceptions to checkov's checks (the same list is in arm/cluster.json under
  // the resource's metadata.checkov):
  // checkov:skip=CKV_AZURE_4:Container Insights needs a Log Analytics workspace this example does not create; enable monitoring in your own deployment
  // checkov:skip=CKV_AZURE_6:the deployer's address is unknown, so the default is unrestricted; set apiServerAuthorizedIPRanges or use a private cluster
  // checkov:skip=CKV_AZURE_8:the Kubernetes Dashboard add-on no longer exists in AKS, there is nothing to disable
  // checkov:skip=CKV_AZURE_172:the Secrets Store CSI driver add-on is not enabled in this cluster
  // checkov:skip=CKV_AZURE_227:encryption at host needs the subscription feature Microsoft.Compute/EncryptionAtHost; enable it where registered
  name: clusterName
  location: location
  sku: {
    name: 'Base'
    tier: 'Standard'
  }
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    kubernetesVersion: empty(kubernetesVersion) ? null : kubernetesVersion
    dnsPrefix: clusterName
    enableRBAC: true
    disableLocalAccounts: true
    aadProfile: {
      managed: true
      enableAzureRBAC: true
      adminGroupObjectIDs: adminGroupObjectIDs
    }
    apiServerAccessProfile: {
      authorizedIPRanges: apiServerAuthorizedIPRanges
    }
    autoUpgradeProfile: {
      upgradeChannel: 'patch'
      nodeOSUpgradeChannel: 'NodeImage'
    }
    networkProfile: {
      networkPlugin: 'azure'
      networkPluginMode: 'overlay'
      networkDataplane: 'cilium'
      networkPolicy: 'cilium'
    }
    addonProfiles: {
      azurepolicy: {
        enabled: true
      }
    }
    agentPoolProfiles: [
      {
        name: 'system'
        mode: 'System'
        type: 'VirtualMachineScaleSets'
        osType: 'Linux'
        osSKU: 'Ubuntu'
        vmSize: systemPoolVmSize
        osDiskType: 'Ephemeral'
        count: systemPoolCount
        maxPods: 50
        availabilityZones: empty(availabilityZones) ? null : availabilityZones
        nodeTaints: [
          'CriticalAddonsOnly=true:NoSchedule'
        ]
      }
      {
        name: 'user'
        mode: 'User'
        type: 'VirtualMachineScaleSets'
        osType: 'Linux'
        osSKU: userPoolOsSku
        vmSize: userPoolVmSize
        osDiskType: 'Ephemeral'
        count: userPoolCount
        maxPods: 50
        availabilityZones: empty(availabilityZones) ? null : availabilityZones
        enableAutoScaling: userPoolEnableAutoScaling
        minCount: userPoolEnableAutoScaling ? userPoolMinCount : null
        maxCount: userPoolEnableAutoScaling ? userPoolMaxCount : null
        nodeInitializationTaints: [
          gateTaint
        ]
      }
    ]
  }
}

@description('Name of the AKS cluster.')
output clusterName string = cluster.name
